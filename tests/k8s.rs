//! The Kubernetes manifests of `deploy/k8s/` parse, run the image's runner with the command
//! the README says, take the URL from a Secret, and meet the `restricted` Pod Security
//! Standard: non-root, no privilege escalation, every capability dropped, `RuntimeDefault`
//! seccomp (and a read-only root filesystem). The negative: a pod spec without those fields is
//! caught by the same checks.

use serde_yaml::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/k8s/{name}")).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The pod spec of a Deployment, Job or CronJob.
fn pod_spec(doc: &Value) -> &Value {
    let spec = &doc["spec"];
    match doc["kind"].as_str() {
        Some("CronJob") => &spec["jobTemplate"]["spec"]["template"]["spec"],
        _ => &spec["template"]["spec"],
    }
}

/// What the restricted profile refuses in `pod`, as lines.
fn violations(pod: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let pod_sc = &pod["securityContext"];
    if pod_sc["runAsNonRoot"].as_bool() != Some(true) {
        out.push("pod: runAsNonRoot is not true".into());
    }
    if pod_sc["seccompProfile"]["type"].as_str() != Some("RuntimeDefault") {
        out.push("pod: seccompProfile is not RuntimeDefault".into());
    }
    let containers = pod["containers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .chain(pod["initContainers"].as_sequence().into_iter().flatten());
    for c in containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            out.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        let drops: Vec<&str> = sc["capabilities"]["drop"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !drops.contains(&"ALL") {
            out.push(format!("{name}: capabilities do not drop ALL"));
        }
        if sc["readOnlyRootFilesystem"].as_bool() != Some(true) {
            out.push(format!("{name}: the root filesystem is writable"));
        }
    }
    out
}

/// The runner's container: its image and arguments, and whether its URL comes from a Secret.
fn runner(pod: &Value) -> (String, Vec<String>, bool) {
    let all = pod["initContainers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .chain(pod["containers"].as_sequence().into_iter().flatten());
    for c in all {
        let image = c["image"].as_str().unwrap_or_default();
        if image.starts_with("meta-chat-migrations") {
            let args = c["args"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            let secret = c["env"].as_sequence().into_iter().flatten().any(|e| {
                e["name"].as_str() == Some("DATABASE_URL")
                    && e["valueFrom"]["secretKeyRef"]["key"].as_str().is_some()
            });
            return (image.to_string(), args, secret);
        }
    }
    panic!("no runner container")
}

#[test]
fn the_manifests_run_the_runner_under_the_restricted_profile() {
    for (file, kind, command) in [
        ("deployment-init.yaml", "Deployment", "migrate"),
        ("job-migrate.yaml", "Job", "migrate"),
        ("cronjob-partitions.yaml", "CronJob", "partitions"),
    ] {
        let doc = load(file);
        assert_eq!(doc["kind"].as_str(), Some(kind), "{file}");
        let pod = pod_spec(&doc);
        assert_eq!(violations(pod), Vec::<String>::new(), "{file}");
        let (_, args, secret) = runner(pod);
        assert_eq!(args, [command], "{file}");
        assert!(secret, "{file}: DATABASE_URL not from a Secret");
    }
    let deployment = load("deployment-init.yaml");
    assert!(
        pod_spec(&deployment)["initContainers"]
            .as_sequence()
            .is_some(),
        "the Deployment migrates in an initContainer"
    );
    // The negative: the CronJob the docs showed before has none of it.
    let bare: Value = serde_yaml::from_str(
        "spec: {containers: [{name: partitions, image: meta-chat-migrations:latest, args: [partitions]}]}",
    )
    .unwrap();
    assert_eq!(
        violations(&bare["spec"]).len(),
        5,
        "{:?}",
        violations(&bare["spec"])
    );
}

//! The README's boot: migrate, then serve, in a synchronous application that may run as PID 1
//! in its container.
//!
//! PID 1 ignores every signal it has no handler for, SIGTERM included: without the handler
//! below, `docker stop` or a Kubernetes rollout would wait out its grace period (the migration
//! going on meanwhile), then SIGKILL the process. With it, SIGTERM stops the run (its statements
//! cancelled on the server, the migration lock released) and the process exits 143 at once.
//!
//!     DATABASE_URL=postgres://postgres@localhost:5432/postgres cargo run --example boot

use std::process::ExitCode;

use meta_chat_migrations::{migrate, Error, Reason, Settings};
use signal_hook::consts::{SIGINT, SIGTERM};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    // SIGTERM and SIGINT stop the run, then the application.
    let interrupt = settings.interrupt.clone();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).expect("signals");
    let stop = signals.handle();
    let waiter = std::thread::spawn(move || signals.forever().next());
    std::thread::spawn({
        let interrupt = interrupt.clone();
        move || {
            if let Ok(Some(number)) = waiter.join() {
                let name = if number == SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                interrupt.trigger(Reason::Signal { name, number });
            }
        }
    });
    match migrate(&settings) {
        Ok(report) => log::info!("schema at version {:?}", report.to),
        Err(e) => return fail(&e),
    }
    // ... build the application's pool and serve here, until a signal.
    while interrupt.reason().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop.close();
    ExitCode::from(143)
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(e.exit_code() as u8)
}

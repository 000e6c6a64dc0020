//! The `drawbridge` binary: parse the command line ([`drawbridge::cli`]), start what it asks
//! for, map the outcome to an exit status. anyhow lives only here, at the edge.

/// jemalloc, not the C library's allocator: its size classes keep the long-lived state of an
/// idle stream apart from the short-lived buffers of its set-up (TLS records, frames), so
/// what those free comes back to the system in whole pages. glibc's heap kept it as holes
/// between live objects (measured: ~10 KiB per idle pair resident for nothing).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Purged pages go back to the system at once (`MADV_DONTNEED`), not lazily (`MADV_FREE`,
/// which keeps them resident until the kernel is short of memory).
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &u8 = &b"muzzy_decay_ms:0\0"[0];

/// Hand every arena's unused pages back to the system (the engine calls it periodically).
fn purge_arenas() {
    // MALLCTL_ARENAS_ALL (4096): all arenas.
    let name = c"arena.4096.purge";
    // SAFETY: a documented mallctl with no input or output.
    unsafe {
        tikv_jemalloc_sys::mallctl(name.as_ptr(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), 0);
    }
}

use std::process::ExitCode;

use clap::Parser;
use drawbridge::cli::{Cli, Command, GatewayCommand, StoreCommand, ctl, init_logging};
use drawbridge::config::Settings;
use drawbridge::dashboard::{app, client::Client};
use drawbridge::engine::{Engine, Request};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // Everything drawbridge creates (database, dialback secret, keys, transcripts written
    // from the dashboard, the control socket) is for its own user only.
    // SAFETY: umask only sets the process's file-creation mask; no memory is involved.
    unsafe { libc::umask(0o077) };
    drawbridge::engine::set_memory_release(purge_arenas);
    let cli = Cli::parse();
    // Generated from the command line alone: no config is read, nothing is started.
    match cli.command {
        Some(Command::Man) => return print_generated(drawbridge::cli::man::page().as_bytes()),
        Some(Command::Completions { shell }) => return print_generated(&drawbridge::cli::completions(shell)),
        _ => {}
    }
    let settings = match &cli.config {
        Some(p) => match Settings::load(p) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("drawbridge: {e}");
                return ExitCode::from(2);
            }
        },
        None => Settings::builtin(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drawbridge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        None | Some(Command::Run) => rt.block_on(run(settings)),
        Some(Command::Serve) => rt.block_on(serve(settings)),
        Some(Command::Demo) => rt.block_on(demo()),
        Some(Command::Attach { socket }) => rt.block_on(dashboard(Client::socket(socket.unwrap_or(settings.control_socket)))),
        Some(Command::Ctl { socket, cmd }) => {
            ctl::default_sigpipe();
            let socket = socket.unwrap_or(settings.control_socket);
            rt.block_on(ctl::run(&socket, &cmd, &mut std::io::stdout(), &mut std::io::stderr()))
                .map_err(Into::into)
                .map(|ok| ExitCode::from(u8::from(!ok)))
        }
        Some(Command::Gateway { cmd: GatewayCommand::Setup { server } }) => drawbridge::cli::gateway_setup(&settings, &server)
            .map(|lines| print!("{lines}"))
            .map_err(Into::into)
            .map(|()| ExitCode::SUCCESS),
        Some(Command::Store { cmd: StoreCommand::Migrate { to_postgres, node, json } }) => rt.block_on(async {
            // Warnings (a data dir open to others) and the schema's migration, to stderr.
            init_logging(&settings, false)?;
            drawbridge::cli::store::migrate(&settings, &to_postgres, node.as_deref(), json, &mut std::io::stdout()).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Some(Command::Man | Command::Completions { .. }) => unreachable!("answered before the config is read"),
    };
    result.unwrap_or_else(|e| {
        eprintln!("drawbridge: {e:#}");
        ExitCode::FAILURE
    })
}

/// `man` and `completions` to standard output; a closed pipe (`| head`) ends quietly.
fn print_generated(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    ctl::default_sigpipe();
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drawbridge: cannot write to standard output: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The engine and its control socket; open secret files get one warning each, with the fix.
async fn start(settings: Settings, never_terminal: bool) -> anyhow::Result<Engine> {
    init_logging(&settings, never_terminal)?;
    for w in drawbridge::secrets::warnings(&settings) {
        tracing::warn!("{w}");
    }
    let mut engine = Engine::start(settings).await?;
    drawbridge::control::start(&mut engine)?;
    tracing::info!(control = %engine.settings().control_socket.display(), "control socket ready");
    Ok(engine)
}

/// Headless: until SIGTERM or SIGINT; SIGHUP re-reads certificates and keys.
async fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
    let engine = start(settings, false).await?;
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int, mut hup) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?, signal(SignalKind::hangup())?);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = engine.acting_as("SIGHUP").execute(Request::Reload).await;
            }
        }
    }
    tracing::info!("shutting down");
    engine.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Server and dashboard in one process; the dashboard quits → the server stops.
async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    let engine = start(settings, true).await?;
    let result = dashboard(Client::in_process(engine.handle())).await;
    engine.shutdown().await;
    result
}

async fn demo() -> anyhow::Result<ExitCode> {
    let demo = drawbridge::demo::Demo::start().await.map_err(|e| anyhow::anyhow!("demo: {e}"))?;
    let result = dashboard(Client::in_process(demo.main.handle())).await;
    demo.stop().await;
    result
}

/// The dashboard until the operator quits; SIGTERM / SIGHUP / SIGINT end it cleanly (the
/// terminal is restored). Over a socket (`attach`), quitting leaves the server running.
async fn dashboard(client: Client) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = CancellationToken::new();
    let (mut term, mut hup, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::hangup())?, signal(SignalKind::interrupt())?);
    let dash = app::run(client, stop.clone());
    tokio::pin!(dash);
    let result = tokio::select! {
        r = &mut dash => r,
        _ = async { tokio::select! { _ = term.recv() => {}, _ = hup.recv() => {}, _ = int.recv() => {} } } => {
            stop.cancel();
            dash.await
        }
    };
    result.map_err(|e| anyhow::anyhow!(e))?;
    Ok(ExitCode::SUCCESS)
}

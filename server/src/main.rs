//! `hallmark-server`: parse the command line, run the command, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use hallmark_server::cli::{AuditCommand, Cli, Command, KeysCommand, UserCommand};
use hallmark_server::config::ServeSettings;
use hallmark_server::datadir::{self, InitOptions};

// mimalloc instead of glibc malloc: sled copies a leaf node on every write, and glibc's
// malloc/free/consolidate took ~26% of the device authorization endpoint's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a log file or journal gets no escape sequences.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hallmark-server: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init(args) => {
            let database = match args.database.database_url.filter(|u| !u.is_empty()) {
                None => None,
                Some(url) => Some(hallmark_server::backend::Database {
                    url: hallmark_server::store::DatabaseUrl::parse(&url)?,
                    ca: args.database.database_ca,
                }),
            };
            let out = hallmark_server::store::block_on(datadir::init(&InitOptions {
                data_dir: args.data_dir,
                issuer: args.issuer,
                hosts: args.hosts,
                database,
            }))??;
            let ca_cert = std::fs::canonicalize(&out.ca_cert).unwrap_or(out.ca_cert);
            println!(
                "{}",
                serde_json::json!({
                    "issuer": out.issuer,
                    "ca_cert": ca_cert,
                    "admin_client_id": out.admin_client_id,
                    "admin_client_secret": out.admin_client_secret.expose(),
                })
            );
            Ok(())
        }
        Command::Serve(args) => {
            let settings =
                ServeSettings::resolve(&args.data_dir, args.config.as_deref(), args.layer())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(hallmark_server::serve::serve(settings))?;
            Ok(())
        }
        Command::Audit(AuditCommand::Verify {
            data_dir,
            checkpoints,
            export_dir,
        }) => match datadir::verify_audit(&data_dir, &checkpoints, export_dir.as_deref()) {
            Ok(report) => {
                for m in &report.matched {
                    let cp = &m.checkpoint;
                    let signed = m
                        .signed_by
                        .as_ref()
                        .map_or_else(|why| why.clone(), |kid| format!("signed by {kid}"));
                    println!(
                        "checkpoint {}: entry {} matches (made {}; {signed})",
                        m.path.display(),
                        cp.seq,
                        hallmark_server::checkpoint::utc(cp.time)
                    );
                }
                for chain in &report.export {
                    for note in &chain.unchecked_signatures {
                        println!("note: {note}");
                    }
                    println!(
                        "audit export intact: {} entries 1..={} in {} segments{}",
                        chain.prefix,
                        chain.last.0,
                        chain.segments,
                        if chain.torn_tail {
                            " (the open segment ends in a torn line from a crash; the server cuts it at start)"
                        } else {
                            ""
                        }
                    );
                }
                let pruned = report
                    .anchors
                    .iter()
                    .map(|(_, seq)| format!(" after pruned entries 1..={seq}"))
                    .collect::<String>();
                println!("audit chain intact: {} entries{pruned}", report.entries);
                Ok(())
            }
            Err(e) if e.is_finding() => {
                println!("{e}");
                std::process::exit(1);
            }
            Err(e) => Err(e.into()),
        },
        Command::Keys(KeysCommand::Rotate {
            data_dir,
            activate_in,
        }) => {
            let kid = datadir::rotate_keys(&data_dir, activate_in)?;
            println!(
                "{}",
                serde_json::json!({"kid": kid, "signs_in_seconds": activate_in})
            );
            Ok(())
        }
        Command::User(UserCommand::Add { name, data_dir }) => {
            let user = hallmark_server::accounts::add_user_from(
                &data_dir,
                &name,
                std::io::stdin().lock(),
            )?;
            println!("{}", serde_json::json!({"username": user}));
            Ok(())
        }
        _ => anyhow::bail!("command not available in this build"),
    }
}

/// The error and its causes on one line, for an operator's terminal.
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

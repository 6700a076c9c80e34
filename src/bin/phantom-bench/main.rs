//! `phantom-bench`: load scenarios against a Phantom server it starts itself (the release binary
//! beside it, on a temp data dir) or against `--target ADDR`, each also run as a ratio to a bare
//! tonic echo service (the ceiling of this machine); the table ends with the benchmark targets
//! judged from the rows (`targets`). See BENCHMARKS.md.

/// The server's allocator (`src/main.rs`), so that the echo ceiling this tool serves is built
/// the same way and the ratios compare like with like.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cpu;
mod echo;
mod external;
mod load;
mod procs;
mod profile;
mod scenarios;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use external::{CountsAt, Syncs};
use scenarios::{Knobs, Row, Target};

const ALL: [&str; 8] = [
    "unary-read",
    "unary-send",
    "e2e",
    "fanout",
    "streams",
    "replay",
    // Last: deleting their logs when they end would stall the fsyncs of a scenario after them.
    // The floor's log is the smaller (half the send rate, open loop), so it goes first: the
    // latency row is not the one behind a large deletion.
    "e2e-floor",
    "echo-durable",
];

/// Load scenarios for Phantom, each compared with a bare tonic echo service.
#[derive(Parser, Debug)]
#[command(name = "phantom-bench", version, about)]
struct Args {
    /// Scenarios, comma-separated: unary-read, unary-send, e2e, fanout, streams, replay,
    /// e2e-floor, echo-durable, all.
    #[arg(long, default_value = "all")]
    scenarios: String,
    /// A running server instead of one started here (give its admin token too).
    #[arg(long)]
    target: Option<String>,
    /// Admin token of --target.
    #[arg(long, env = "PHANTOM_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Process id of --target, for memory figures.
    #[arg(long)]
    server_pid: Option<u32>,
    /// `host:port` of --target's `GET /metrics` (`[metrics] listen`), to check the outcome of
    /// every call h2load makes.
    #[arg(long)]
    target_metrics: Option<String>,
    /// Also drive unary-read and unary-send with h2load (nghttp2, on PATH), each against the
    /// echo ceiling driven by h2load in the same alternating rounds.
    #[arg(long)]
    h2load: bool,
    /// The server binary to start (default: phantom-grpc-api beside this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Storage engine of the server this tool starts (`storage.engine`: lsm or sqlite).
    #[arg(long, default_value = "lsm")]
    engine: String,
    /// The server this tool starts, and the echo ceiling, listen on Unix sockets (in their
    /// temp dirs) instead of 127.0.0.1, as a server kept local for a GUI does. h2load has no
    /// Unix sockets, so not with --h2load.
    #[arg(long)]
    unix: bool,
    /// `server.runtime` of the server this tool starts (multi_thread or single_thread; default:
    /// the server's).
    #[arg(long)]
    runtime: Option<String>,
    /// `server.hand_offs` of the server this tool starts (prompt or batched; default: the
    /// server's).
    #[arg(long)]
    hand_offs: Option<String>,
    /// HTTP/2 connections for unary load.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent calls in flight, across all connections.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Sender and recipient pairs of unary-send (h2load always sends as the first pair).
    /// With many, the store's writes land all over its memtables; with one, always at the same
    /// place (BENCHMARKS.md, twenty-third session).
    #[arg(long, default_value_t = 64)]
    send_pairs: usize,
    /// Warm-up seconds before each measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Measured seconds per load scenario.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Streams for fanout and streams.
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Events in the replay log.
    #[arg(long, default_value_t = 100_000)]
    replay_events: usize,
    /// e2e send rates per second, comma-separated: one e2e row each, in order, to find the
    /// rate a latency holds up to; 0 (the default) is half the measured unary-send rate
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "0")]
    e2e_rate: Vec<f64>,
    /// Body of each echo call, both ways; 64 is the ceiling of the targets, a larger one shows
    /// what a reply's size costs on its own
    #[arg(long, default_value_t = 64)]
    echo_bytes: usize,
    /// Write every e2e message's send and receive times to this file (one section per rate,
    /// its clock in Unix time), to line slow messages up with what the server did meanwhile
    /// (BENCHMARKS.md, "Where e2e's slow messages fall")
    #[arg(long)]
    e2e_trace: Option<std::path::PathBuf>,
    /// Serve the echo ceiling through the server's own connection wrapper (`net::Coalesced`:
    /// writes held and batched) instead of bare tonic, to compare like with like
    #[arg(long)]
    echo_coalesced: bool,
    /// Alternating windows of echo and scenario for unary-read and unary-send (their ratio)
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// A few seconds per scenario with small sizes: proves the tool works, measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Profile the server under test over each of its measured windows (its own sampler,
    /// `[metrics] profiling`; on with the server this tool starts, and --target needs
    /// --target-metrics and the setting on): collapsed stacks in DIR/SCENARIO.folded, appended
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Internal: serve the echo ceiling on this address.
    #[arg(long, hide = true)]
    serve_echo: Option<String>,
    /// Internal, with --serve-echo: the durable echo, its log in this directory.
    #[arg(long, hide = true)]
    echo_durable: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("phantom-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        if let Some(listen) = &args.serve_echo {
            let durable = args.echo_durable.as_deref();
            return echo::serve(listen, args.echo_coalesced, durable).await;
        }
        run(args).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("phantom-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mut args: Args) -> Result<(), String> {
    if args.smoke {
        args.warmup = args.warmup.min(0.5);
        args.duration = args.duration.min(1.5);
        args.streams = args.streams.min(200);
        args.replay_events = args.replay_events.min(2_000);
        args.rounds = args.rounds.min(2);
    }
    check_combination(&args)?;
    let wanted: Vec<&str> = if args.scenarios == "all" {
        ALL.to_vec()
    } else {
        args.scenarios.split(',').map(str::trim).collect()
    };
    if let Some(bad) = wanted.iter().find(|s| !ALL.contains(s)) {
        return Err(format!(
            "unknown scenario {bad:?}; known: {}",
            ALL.join(", ")
        ));
    }
    if let Some(bad) = args.e2e_rate.iter().find(|r| !r.is_finite() || **r < 0.0) {
        return Err(format!(
            "--e2e-rate {bad}: a rate is a number of sends per second, 0 or more"
        ));
    }
    let k = Knobs {
        connections: args.connections,
        concurrency: args.concurrency,
        send_pairs: args.send_pairs.max(1),
        warmup: Duration::from_secs_f64(args.warmup),
        window: Duration::from_secs_f64(args.duration),
        streams: args.streams,
        replay_events: args.replay_events,
        e2e_rates: std::mem::take(&mut args.e2e_rate),
        echo_bytes: args.echo_bytes,
        e2e_trace: args.e2e_trace.clone(),
    };
    // Emptied (or made) now, so that a path that cannot be written fails before any load.
    if let Some(path) = &k.e2e_trace {
        std::fs::write(path, "").map_err(|e| format!("--e2e-trace {}: {e}", path.display()))?;
    }

    if args.h2load {
        external::check_installed().await?;
    }
    // The echo server stays up (idle) for the runs paired with it.
    let echo_proc = procs::echo(args.echo_coalesced, false, args.unix)?;
    let ceiling_op = scenarios::echo(&echo_proc, &k).await?;
    let (echo_op, echo_meter) = (ceiling_op.op.clone(), ceiling_op.meter);
    let echo_fixed = ceiling_op.fixed.clone();
    let mut rows = vec![ceiling_op.run(&k).await];
    // Said in the row itself, so that a table or JSON read later tells how the run was made.
    rows[0].note = setup_note(&args);
    let ceiling = rows[0].per_sec.unwrap_or(0.0);
    let ceiling_p99 = rows[0].p99_ms.unwrap_or(0.0);
    // A latency scenario's ratio: its p99 over the echo's.
    let p99_ratio = |r: &Row| r.p99_ms.map(|p| p / ceiling_p99);

    // The server under test: started here (and kept until the end), unless --target.
    let (_started, target) = match &args.target {
        Some(addr) => {
            let token = args
                .admin_token
                .clone()
                .ok_or("--target needs --admin-token")?;
            let t = Target::connect(
                addr,
                &token,
                args.server_pid,
                args.target_metrics.clone(),
                k.connections,
            )
            .await?;
            (None, t)
        }
        None => {
            let (served, t) = start_server(&args, k.connections).await?;
            (Some(served), t)
        }
    };

    let at = external::Endpoints {
        echo: &echo_proc.addr,
        server: &target.addr,
        counts: CountsAt::Metrics(target.metrics.as_deref()),
        pid: target.pid,
        echo_pid: Some(echo_proc.pid()),
        profiled: true,
    };
    if let Some(dir) = &args.profile {
        // Known here: the server this tool starts serves metrics, and a --target without
        // --target-metrics was refused (`check_combination`).
        let metrics = target
            .metrics
            .as_deref()
            .ok_or("--profile needs the server's metrics listener (--target-metrics)")?;
        profile::init(metrics, dir.clone()).await?;
    }
    let mut send_rate = None;
    for name in &wanted {
        eprintln!("phantom-bench: running {name} ...");
        profile::label(*name);
        let open_before = scenarios::open_stream_count(&target).await?;
        // Rows after this one: the same scenario driven by h2load, or e2e's further rates.
        let mut extra = Vec::new();
        let mut row = match *name {
            "unary-read" | "unary-send" => {
                let p = if *name == "unary-read" {
                    scenarios::unary_read(&target).await?
                } else {
                    scenarios::unary_send(&target, &k).await?
                };
                let fixed = p.fixed.clone();
                // A read syncs nothing, so only a send's row shows fsyncs.
                let paired = p.run_paired((&echo_op, echo_meter), &k, args.rounds);
                let r = Syncs::around(at.counts, async { Ok(paired.await) });
                let r = r.await?;
                if *name == "unary-send" {
                    send_rate = r.per_sec;
                }
                if args.h2load {
                    profile::label(format!("{name}-h2load"));
                    let h = external::paired(name, &at, &echo_fixed, &fixed, &k, args.rounds);
                    extra.push(h.await?);
                }
                r
            }
            "e2e" => {
                sweep(&k, send_rate, &p99_ratio, &mut extra, async |i, rate| {
                    if i > 0 {
                        // Each rate starts with the streams of the one before gone.
                        scenarios::quiesce(&target, open_before).await?;
                    }
                    profile::label(format!("e2e-{rate:.0}"));
                    let run = scenarios::e2e(&target, &k, rate);
                    Syncs::around(at.counts, run).await
                })
                .await?
            }
            "e2e-floor" => {
                // Its own process and log, as echo-durable; the rates e2e ran at.
                let served = procs::echo(args.echo_coalesced, true, args.unix)?;
                let floor = scenarios::e2e_floor(&served, &k).await?;
                sweep(&k, send_rate, &p99_ratio, &mut extra, async |_, rate| {
                    let run = scenarios::e2e_floor_at(&floor, &k, rate);
                    Syncs::around(CountsAt::Echo(&served.addr), async { Ok(run.await) }).await
                })
                .await?
            }
            "echo-durable" => {
                // Its own process, and its log, for this row only.
                let served = procs::echo(args.echo_coalesced, true, args.unix)?;
                let p = scenarios::echo_durable(&served, &k).await?;
                let fixed = p.fixed.clone();
                let paired = p.run_paired((&echo_op, echo_meter), &k, args.rounds);
                let r = Syncs::around(CountsAt::Echo(&served.addr), async { Ok(paired.await) });
                let r = r.await?;
                if args.h2load {
                    let at = external::Endpoints {
                        echo: &echo_proc.addr,
                        server: &served.addr,
                        counts: CountsAt::Echo(&served.addr),
                        pid: Some(served.pid()),
                        echo_pid: Some(echo_proc.pid()),
                        profiled: false,
                    };
                    let h = external::paired(name, &at, &echo_fixed, &fixed, &k, args.rounds);
                    extra.push(h.await?);
                }
                r
            }
            "fanout" => scenarios::fanout(&target, &k).await?,
            // On a fresh server when this tool starts it: memory freed by earlier scenarios
            // would otherwise be reused and hide the cost of new streams.
            "streams" if args.target.is_none() => {
                let (_fresh, t) = start_server(&args, 1).await?;
                scenarios::streams(&t, &k).await?
            }
            "streams" => scenarios::streams(&target, &k).await?,
            "replay" => scenarios::replay(&target, &k).await?,
            _ => unreachable!("checked above"),
        };
        row.ratio = match *name {
            "unary-read" | "unary-send" | "e2e" | "echo-durable" | "e2e-floor" => row.ratio,
            "replay" => row.per_sec.map(|r| r / ceiling),
            "fanout" => p99_ratio(&row),
            _ => None,
        };
        rows.push(row);
        rows.extend(extra);
        scenarios::quiesce(&target, open_before).await?;
    }
    let conditions = targets::Conditions {
        smoke: args.smoke,
        streams: k.streams,
        replay_events: k.replay_events,
        e2e_at_half_send_rate: send_rate.is_some() && k.e2e_rates.first() == Some(&0.0),
    };
    targets::judge(&mut rows, &conditions);
    report(&rows, args.json)
}

/// One row per rate of `e2e` (and `e2e-floor`) from `run`, given each rate's index, each
/// with its `ratio`: the first row is returned, the rest appended to `extra` in order.
async fn sweep(
    k: &Knobs,
    send_rate: Option<f64>,
    ratio: &dyn Fn(&Row) -> Option<f64>,
    extra: &mut Vec<Row>,
    mut run: impl AsyncFnMut(usize, f64) -> Result<Row, String>,
) -> Result<Row, String> {
    let mut rows = Vec::new();
    for (i, rate) in e2e_rates(k, send_rate).enumerate() {
        let mut r = run(i, rate).await?;
        r.ratio = ratio(&r);
        rows.push(r);
    }
    if rows.is_empty() {
        return Err("no rate to run at".into());
    }
    let first = rows.remove(0);
    extra.extend(rows);
    Ok(first)
}

/// The rates of `e2e` (and `e2e-floor`), in order: 0 in `--e2e-rate` stands for half the
/// send rate measured in this run, or 500/s if `unary-send` did not run.
fn e2e_rates(k: &Knobs, send_rate: Option<f64>) -> impl Iterator<Item = f64> + '_ {
    let half = send_rate.map(|r| r / 2.0).unwrap_or(500.0);
    k.e2e_rates
        .iter()
        .map(move |&r| if r == 0.0 { half } else { r })
}

/// Refuses options that cannot go together, before anything starts.
fn check_combination(args: &Args) -> Result<(), String> {
    let unix_target = args
        .target
        .as_deref()
        .is_some_and(|t| t.starts_with("unix:"));
    if (args.unix || unix_target) && args.h2load {
        let which = if args.unix {
            "--unix"
        } else {
            "a unix: --target"
        };
        return Err(format!(
            "--h2load drives TCP only (h2load has no Unix sockets): drop {which} or --h2load"
        ));
    }
    if args.target.is_some() {
        let mine = [
            ("--unix", args.unix),
            ("--runtime", args.runtime.is_some()),
            ("--hand-offs", args.hand_offs.is_some()),
        ];
        if let Some((flag, _)) = mine.iter().find(|(_, given)| *given) {
            return Err(format!(
                "{flag} sets up the server this tool starts, not --target's (a Unix socket \
                 target is --target unix:/path)"
            ));
        }
        if args.profile.is_some() && args.target_metrics.is_none() {
            return Err(
                "--profile with --target needs --target-metrics, where the server serves its \
                 profiles"
                    .into(),
            );
        }
    }
    Ok(())
}

/// The ceiling row's note: how this run was set up, where it differs from the defaults.
fn setup_note(args: &Args) -> String {
    let mut said = Vec::new();
    if args.echo_coalesced {
        said.push("served through the server's connection wrapper (--echo-coalesced)".to_string());
    }
    if args.unix {
        said.push("the echo and the server on Unix sockets (--unix)".into());
    }
    // With --target these two are refused (`check_combination`).
    if let Some(r) = &args.runtime {
        said.push(format!("server.runtime = {r}"));
    }
    if let Some(h) = &args.hand_offs {
        said.push(format!("server.hand_offs = {h}"));
    }
    said.join("; ")
}

/// Starts a server here (the binary beside this tool, a temp data dir) with `conns`
/// connections to it; it stops when the returned `Served` drops.
async fn start_server(args: &Args, conns: usize) -> Result<(procs::Served, Target), String> {
    let bin = procs::server_binary(args.server_bin.clone())?;
    let settings = procs::Settings {
        engine: args.engine.clone(),
        unix: args.unix,
        runtime: args.runtime.clone(),
        hand_offs: args.hand_offs.clone(),
        profiling: args.profile.is_some(),
    };
    let served = procs::phantom(&bin, &settings)?;
    let t = Target::connect(
        &served.addr,
        procs::ADMIN,
        Some(served.pid()),
        served.metrics.clone(),
        conns,
    )
    .await?;
    Ok((served, t))
}

fn report(rows: &[Row], json: bool) -> Result<(), String> {
    if json {
        let out = serde_json::to_string_pretty(rows).map_err(|e| e.to_string())?;
        println!("{out}");
        return Ok(());
    }
    let f = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
    println!(
        "{:<18} {:>12} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>5}  note",
        "scenario", "per sec", "p50 ms", "p99 ms", "max ms", "ratio", "srv µs", "cli µs", "idle"
    );
    for r in rows {
        let c = r.cpu;
        println!(
            "{:<18} {:>12} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>5}  {}",
            r.scenario,
            f(r.per_sec, 0),
            f(r.p50_ms, 3),
            f(r.p99_ms, 3),
            f(r.max_ms, 1),
            f(r.ratio, 3),
            f(c.and_then(|c| c.server_us), 1),
            f(c.map(|c| c.client_us), 1),
            c.map(|c| format!("{:.0}%", 100.0 * c.idle))
                .unwrap_or_else(|| "-".into()),
            r.note
        );
    }
    println!(
        "ratio: throughput / echo throughput (unary-read, unary-send, echo-durable: echo run \
         in windows alternating with the scenario's, see note; replay: the echo row); \
         p99 / echo p99 (e2e, e2e-floor, fanout)"
    );
    println!(
        "srv µs, cli µs: CPU per call (e2e: per message) over the measured windows, of the \
         serving process (echo's for the ceiling) and of the client (this tool; in the h2load \
         rows h2load, over its runs with their warm-ups, per call the server counted; their \
         notes give the echo's own per call in its windows); idle: the machine's idle share \
         then (Linux /proc)"
    );
    let judged = targets::lines(rows);
    if !judged.is_empty() {
        println!(
            "targets (BENCHMARKS.md; the targets are for 2 cores shared by client and server, \
             this machine has {}):",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        for line in judged {
            println!("  {line}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(argv: &[&str]) -> Result<(), String> {
        let args =
            Args::try_parse_from(std::iter::once("phantom-bench").chain(argv.iter().copied()))
                .map_err(|e| e.to_string())?;
        check_combination(&args)
    }

    #[test]
    fn options_for_the_servers_this_tool_starts_are_refused_with_a_target() {
        assert!(
            checked(&[
                "--unix",
                "--runtime",
                "single_thread",
                "--hand-offs",
                "batched"
            ])
            .is_ok()
        );
        for flag in [
            &["--unix"][..],
            &["--runtime", "single_thread"],
            &["--hand-offs", "batched"],
        ] {
            let argv = [&["--target", "127.0.0.1:1"][..], flag].concat();
            let e = checked(&argv).expect_err("refused");
            assert!(e.starts_with(flag[0]), "{e}");
        }
        let e = checked(&["--unix", "--h2load"]).expect_err("refused");
        assert!(e.contains("--h2load") && e.contains("--unix"), "{e}");
        let e = checked(&[
            "--target",
            "unix:/run/p.sock",
            "--admin-token",
            "t",
            "--h2load",
        ])
        .expect_err("refused");
        assert!(
            e.contains("--h2load") && e.contains("unix: --target"),
            "{e}"
        );
        assert!(checked(&["--target", "unix:/run/p.sock", "--admin-token", "t"]).is_ok());
        let e = checked(&["--target", "127.0.0.1:1", "--profile", "p"]).expect_err("refused");
        assert!(e.contains("--target-metrics"), "{e}");
        let with_metrics = ["--target", "127.0.0.1:1", "--target-metrics", "127.0.0.1:2"];
        assert!(checked(&[&with_metrics[..], &["--profile", "p"]].concat()).is_ok());
    }

    #[test]
    fn the_ceiling_row_says_how_the_run_was_set_up() {
        let args = Args::parse_from(["phantom-bench", "--unix", "--runtime", "single_thread"]);
        assert_eq!(
            setup_note(&args),
            "the echo and the server on Unix sockets (--unix); server.runtime = single_thread"
        );
        assert_eq!(setup_note(&Args::parse_from(["phantom-bench"])), "");
    }
}

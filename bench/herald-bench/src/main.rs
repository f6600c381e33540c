use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use herald_bench::wire::UrlTemplate;
use herald_bench::{procfs, Phase, Swarm, Target};

#[derive(Parser)]
#[command(about = "Load generator for Herald and peer SSE servers")]
struct Cli {
    /// Runtime worker threads for the generator.
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// N idle subscriptions: the server's memory before and after.
    Idle {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 100)]
        topics: usize,
        /// Seconds to wait with every subscription open before measuring.
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
    },
    /// N subscribers over T topics, a fixed publish rate.
    Fanout {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        load: LoadArgs,
        /// Events per second, over all topics.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
    },
    /// Raises the rate step by step; reports the highest sustained
    /// deliveries/s with p99 within the bound and nothing lost.
    Ramp {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long, default_value_t = 10.0)]
        start_rate: f64,
        /// Each step multiplies the rate by this.
        #[arg(long, default_value_t = 1.5)]
        factor: f64,
        #[arg(long, default_value_t = 50.0)]
        p99_ms: f64,
        #[arg(long, default_value_t = 12)]
        max_steps: usize,
    },
    /// Everyone reconnects at once with Last-Event-ID after missing events.
    Resume {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 100)]
        topics: usize,
        /// Events each topic gets while its subscribers are away.
        #[arg(long, default_value_t = 10)]
        missed: u64,
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Seconds before a subscriber that has not caught up counts as failed.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// New connections at a fixed rate, each one `GET` answered and closed
    /// (a connect flood): how many were answered, and how fast.
    Connects {
        /// URL each connection asks.
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
        /// Connections per second.
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Loopback source addresses (127.0.0.1..N), so that ports in
        /// TIME_WAIT do not run out.
        #[arg(long, default_value_t = 16)]
        sources: usize,
        /// Most connections in flight at once.
        #[arg(long, default_value_t = 2000)]
        concurrency: usize,
    },
    /// Publish throughput and latency.
    Publish {
        /// Publish URL; `{topic}` is replaced by a topic per connection.
        #[arg(long = "pub")]
        publish: String,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Send Herald's JSON body (needed for batches).
        #[arg(long)]
        json: bool,
        /// Events per request (with --json).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// The server's pid (repeatable): CPU of each process tree.
        #[arg(long = "server-pid")]
        server_pids: Vec<u32>,
    },
}

#[derive(Args)]
struct TargetArgs {
    /// Subscribe URL with {topic}; repeat it to spread subscribers over
    /// several servers (the nodes of a cluster) in turn.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1/events?topic={topic}")]
    sub: Vec<String>,
    /// Publish URL with {topic}; the body is the event's data.
    #[arg(
        long = "pub",
        default_value = "http://127.0.0.1:8080/v1/publish?topic={topic}"
    )]
    publish: String,
    /// Extra subscribe header, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Loopback source addresses to spread sockets over (127.0.0.1..N).
    #[arg(long, default_value_t = 1)]
    sources: usize,
    /// The server's pid (repeatable): memory and CPU of each process tree
    /// are reported.
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Post Pushpin's JSON publish items instead of the raw data.
    #[arg(long)]
    pushpin_json: bool,
}

#[derive(Args)]
struct LoadArgs {
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Seconds of publishing (per step for ramp).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Bytes of each event's data.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Publish connections (a topic always uses the same one).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Seconds to wait for the last deliveries after publishing.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
}

impl TargetArgs {
    fn target(&self) -> anyhow::Result<Target> {
        Ok(Target {
            sub: self
                .sub
                .iter()
                .map(|url| UrlTemplate::parse(url))
                .collect::<anyhow::Result<_>>()?,
            publish: UrlTemplate::parse(&self.publish)?,
            headers: self.headers.clone(),
            sources: self.sources,
            server_pids: self.server_pids.clone(),
            connect_concurrency: self.connect_concurrency,
            publish_format: match self.pushpin_json {
                true => herald_bench::wire::PublishFormat::PushpinJson,
                false => herald_bench::wire::PublishFormat::Raw,
            },
        })
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let files = procfs::raise_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(cli.mode, files))?;
    println!("{report}");
    // Open sockets are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

async fn run(mode: Mode, files: u64) -> anyhow::Result<serde_json::Value> {
    Ok(match mode {
        Mode::Idle {
            target,
            subscribers,
            topics,
            settle,
        } => {
            check_files(subscribers, files)?;
            let run = herald_bench::idle(
                target.target()?,
                subscribers,
                topics,
                Duration::from_secs_f64(settle),
            )
            .await?;
            eprintln!(
                "idle: {} connections ({} failed) in {:.1} s; server RSS {:?} -> {:?} KiB; {:.2} KiB per connection",
                run.connections,
                run.connect_errors,
                run.connect_secs,
                run.rss_before_kib,
                run.rss_after_kib,
                run.kib_per_connection.unwrap_or(f64::NAN)
            );
            json!({"mode": "idle", "idle": run})
        }
        Mode::Fanout { target, load, rate } => {
            check_files(load.subscribers, files)?;
            let mut swarm = connect(&target, &load).await?;
            let phase = swarm
                .phase(
                    rate,
                    load.seconds,
                    load.payload,
                    load.publishers,
                    Duration::from_secs_f64(load.grace),
                )
                .await?;
            print_phase("fanout", &phase);
            let out = json!({
                "mode": "fanout", "subscribers": swarm.len(), "topics": load.topics,
                "connect_errors": swarm.connect_errors, "phase": phase,
            });
            swarm.close();
            out
        }
        Mode::Ramp {
            target,
            load,
            start_rate,
            factor,
            p99_ms,
            max_steps,
        } => {
            check_files(load.subscribers, files)?;
            let mut swarm = connect(&target, &load).await?;
            let mut rate = start_rate;
            let mut best: Option<Phase> = None;
            let mut steps = Vec::new();
            for _ in 0..max_steps {
                let phase = swarm
                    .phase(
                        rate,
                        load.seconds,
                        load.payload,
                        load.publishers,
                        Duration::from_secs_f64(load.grace),
                    )
                    .await?;
                print_phase(&format!("ramp {rate:.0}/s"), &phase);
                let ok = phase.lost == 0
                    && phase.duplicated == 0
                    && phase.publish_errors == 0
                    && phase.latency_ms.p99 <= p99_ms
                    && phase.streams_closed == 0;
                steps.push(phase.clone());
                if !ok {
                    break;
                }
                best = Some(phase);
                rate *= factor;
            }
            let best_rate = best.as_ref().map_or(0.0, |p| p.deliveries_per_sec);
            eprintln!("ramp: highest sustained {best_rate:.0} deliveries/s with p99 <= {p99_ms} ms and nothing lost");
            let out = json!({
                "mode": "ramp", "subscribers": swarm.len(), "topics": load.topics,
                "p99_bound_ms": p99_ms, "max_deliveries_per_sec": best_rate,
                "best": best, "steps": steps,
            });
            swarm.close();
            out
        }
        Mode::Resume {
            target,
            subscribers,
            topics,
            missed,
            payload,
            timeout,
        } => {
            check_files(subscribers, files)?;
            let run = herald_bench::resume_storm(
                target.target()?,
                subscribers,
                topics,
                missed,
                payload,
                Duration::from_secs_f64(timeout),
            )
            .await?;
            eprintln!(
                "resume: {} subscribers back in {:.2} s; {} complete, {} failed; expected {} received {} lost {} duplicated {}",
                run.subscribers,
                run.resume_secs,
                run.complete,
                run.failed,
                run.expected,
                run.received,
                run.lost,
                run.duplicated
            );
            json!({"mode": "resume", "resume": run})
        }
        Mode::Connects {
            url,
            rate,
            seconds,
            sources,
            concurrency,
        } => {
            let run = herald_bench::load::connects(
                UrlTemplate::parse(&url)?,
                rate,
                seconds,
                sources,
                concurrency,
            )
            .await?;
            eprintln!(
                "connects: asked {} at {:.0}/s; answered {} ({:.0}/s), failed {}; latency ms p50 {:.2} p99 {:.2} max {:.2}",
                run.asked,
                rate,
                run.answered,
                run.answered_per_sec,
                run.failed,
                run.latency_ms.p50,
                run.latency_ms.p99,
                run.latency_ms.max
            );
            json!({"mode": "connects", "connects": run})
        }
        Mode::Publish {
            publish,
            connections,
            seconds,
            payload,
            json,
            batch,
            server_pids,
        } => {
            let run = herald_bench::publish(
                UrlTemplate::parse(&publish)?,
                connections,
                seconds,
                payload,
                batch,
                json,
                &server_pids,
            )
            .await?;
            eprintln!(
                "publish: {} requests ({} errors), {:.0} requests/s, {:.0} events/s; latency ms p50 {:.2} p99 {:.2} max {:.2}",
                run.requests,
                run.errors,
                run.requests_per_sec,
                run.events_per_sec,
                run.latency_ms.p50,
                run.latency_ms.p99,
                run.latency_ms.max
            );
            json!({"mode": "publish", "publish": run})
        }
    })
}

async fn connect(target: &TargetArgs, load: &LoadArgs) -> anyhow::Result<Swarm> {
    let swarm = Swarm::connect(target.target()?, load.subscribers, load.topics)
        .await
        .context("connecting subscribers")?;
    eprintln!(
        "connected {} subscribers over {} topics in {:.1} s ({} failed)",
        swarm.len() - swarm.connect_errors,
        load.topics,
        swarm.connect_secs,
        swarm.connect_errors
    );
    Ok(swarm)
}

fn check_files(subscribers: usize, limit: u64) -> anyhow::Result<()> {
    if subscribers as u64 + 64 > limit {
        anyhow::bail!(
            "{subscribers} subscribers need more open files than this process may hold ({limit}); run several generators"
        );
    }
    Ok(())
}

fn print_phase(name: &str, p: &Phase) {
    eprintln!(
        "{name}: published {} ({} errors); expected {} received {} lost {} duplicated {}; {:.0} deliveries/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}; CPU client {:.2} s server {}",
        p.published,
        p.publish_errors,
        p.expected,
        p.received,
        p.lost,
        p.duplicated,
        p.deliveries_per_sec,
        p.latency_ms.p50,
        p.latency_ms.p90,
        p.latency_ms.p99,
        p.latency_ms.p999,
        p.latency_ms.max,
        p.client_cpu_secs,
        p.server_cpu_secs.map_or("n/a".into(), |s| format!("{s:.2} s")),
    );
}

//! `coalesce`: replay real allocator traces on a simulated device and compare policies.

use clap::{Args, Parser, Subcommand};
use coalesce_backend::sim::SimConfig;
use coalesce_cli::bench;
use coalesce_cli::replay::{self, ReplayConfig};
use coalesce_cli::report::{json, plot, table};
use coalesce_cli::tune;
use coalesce_cli::units::parse_size;
use coalesce_policy::{OFFLINE, PolicySpec, REGISTRY, registry};
use coalesce_trace::{synth, write_csv};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code for bad input (a malformed trace or option), as usage errors.
const EXIT_BAD_INPUT: u8 = 2;

#[derive(Parser)]
#[command(
    name = "coalesce",
    version,
    about = "GPU memory pools that end fragmentation: replay real allocator traces, compare policies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay allocator traces under allocation policies on a simulated GPU and report reserved
    /// memory, driver calls and the allocator's CPU cost per operation.
    Replay(ReplayArgs),
    /// Benchmark every policy on the bundled and synthetic traces in one run: reserved memory,
    /// driver calls, estimated driver time and CPU cost per operation against torch-native, and
    /// whether the coalesce policy meets its goals.
    Bench(BenchArgs),
    /// List the allocation policies and their options.
    Policies,
    /// Write a synthetic trace (see `coalesce synth --list`) as CSV.
    Synth(SynthArgs),
    /// Find the PYTORCH_CUDA_ALLOC_CONF that reserves least on your trace: replays PyTorch's
    /// allocator (the torch-native model) under combinations of max_split_size_mb,
    /// roundup_power2_divisions, garbage_collection_threshold and expandable_segments, in
    /// parallel, and prints the best settings as a line to paste.
    Tune(TuneArgs),
}

#[derive(Args)]
struct TuneArgs {
    /// Trace files: PyTorch snapshot pickles (torch.cuda.memory._dump_snapshot) or CSV,
    /// optionally gzip-compressed. Each file is tuned on its own; the devices of one snapshot
    /// share one setting.
    #[arg(required = true)]
    traces: Vec<PathBuf>,

    /// Memory of your GPU (e.g. 80GiB, or what the process may use): also reports which
    /// settings avoid an out-of-memory error the default hits at this size.
    #[arg(long, value_parser = parse_size)]
    capacity: Option<u64>,

    /// Search a handful of settings instead of the full grid (seconds instead of a minute).
    #[arg(long)]
    quick: bool,

    /// Never suggest expandable_segments:True (for setups it conflicts with).
    #[arg(long)]
    no_expandable: bool,

    /// Settings shown per file, best first.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    top: u64,

    /// Worker threads; default: one per core.
    #[arg(long, short = 'j')]
    jobs: Option<usize>,

    /// Print one JSON object per file instead of the report.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    target: Option<BenchTarget>,

    /// Extra trace files to include (the bundled and synthetic traces always are, unless
    /// --only is given).
    traces: Vec<PathBuf>,

    /// Bench only the given TRACE files, not the bundled and synthetic ones.
    #[arg(long)]
    only: bool,

    /// Policies to compare (same syntax as for replay). Default: every policy, and the
    /// oracle unless --no-oracle.
    #[arg(long, short, value_name = "NAME[:OPTIONS][,...]")]
    policy: Vec<String>,

    /// Skip the offline oracle: no `oracle` row, no "vs oracle" / "vs bound" figures (its
    /// plans take seconds per large trace, computed in parallel before the replays).
    #[arg(long)]
    no_oracle: bool,

    /// Print one JSON object per trace and policy per line instead of tables.
    #[arg(long)]
    json: bool,

    /// Write one SVG per trace into DIR: requested and reserved bytes over the replay.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,

    /// Timed repeats per trace and policy; the median CPU cost per op is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    repeats: u64,

    /// Driver cost table (JSON, the shape of crates/cli/data/driver-costs.json), e.g. one
    /// measured on your GPU. Default: the bundled table, whose sources it names.
    #[arg(long, value_name = "FILE")]
    costs: Option<PathBuf>,

    /// Memory of the simulated GPU.
    #[arg(long, default_value = "80GiB", value_parser = parse_size)]
    capacity: u64,

    /// Run every synthetic generator with seeds 1 to N (named NAME@SEED beyond seed 1):
    /// traces the policy was not tuned on, to check that its results generalize.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    seeds: u64,
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Benchmark the host allocator (malloc) against glibc, jemalloc, mimalloc and tcmalloc,
    /// each loaded with LD_PRELOAD into the same workload programs (one child process per
    /// measurement); peers are installed with scripts/install-host-peers.sh if missing. Prints
    /// markdown tables of median ns per operation and peak RSS; see docs/host.md.
    Host(HostBenchArgs),
}

#[derive(Args)]
struct HostBenchArgs {
    /// Runs per workload and allocator (allocator order rotated per repeat); medians are
    /// reported. Default 5 (3 with --quick).
    #[arg(long)]
    repeats: Option<usize>,
    /// Multiplies every workload's duration or operation count (1.0 is the run documented in
    /// docs/host.md). Default 1.0 (0.3 with --quick).
    #[arg(long)]
    scale: Option<f64>,
    /// Quick mode for a loaded or small machine: 3 repeats at scale 0.3 unless --repeats or
    /// --scale say otherwise (a few minutes on 2 cores instead of about half an hour).
    #[arg(long)]
    quick: bool,
    /// Workloads to run: a = malloc+free pairs without touching the memory (the allocator's
    /// own cost), t = the same pairs writing every byte (both for sizes 8 B..64 MiB at each
    /// --threads count), b = producer/consumer at mixed sizes (every free remote; 2, 4, 8
    /// threads), c = larson server (random sizes and lifetimes, 8 threads), d = fragmentation
    /// (peak RSS after freeing most of a mixed heap), e = cache-scratch (false sharing),
    /// f = large blocks (64 KiB..32 MiB, random).
    #[arg(long, value_delimiter = ',', default_value = "a,t,b,c,d,e,f",
          value_parser = ["a", "t", "b", "c", "d", "e", "f"])]
    workloads: Vec<String>,
    /// Thread counts of the size-by-thread grids (workloads a and t).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    threads: Vec<usize>,
    /// Internal: the benchmark re-runs this executable as `coalesce bench host workload ...`
    /// for each measurement.
    #[arg(hide = true, trailing_var_arg = true, allow_hyphen_values = true)]
    child: Vec<String>,
}

impl HostBenchArgs {
    /// The argument list [`coalesce_host_bench::main`] parses.
    fn to_args(&self) -> Vec<String> {
        if !self.child.is_empty() {
            return self.child.clone();
        }
        let mut v = vec![
            "--workloads".into(),
            self.workloads.join(","),
            "--threads".into(),
            self.threads
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ];
        if self.quick {
            v.push("--quick".into());
        }
        if let Some(r) = self.repeats {
            v.extend(["--repeats".into(), r.to_string()]);
        }
        if let Some(s) = self.scale {
            v.extend(["--scale".into(), s.to_string()]);
        }
        v
    }
}

#[derive(Args)]
struct SynthArgs {
    /// Generator name, e.g. synth-kv-cache.
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// Seed of the generator; the same seed always gives the same trace.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output file (`.gz` for gzip); default: standard output.
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// List the generators.
    #[arg(long)]
    list: bool,
}

#[derive(Args)]
struct ReplayArgs {
    /// Trace files: CSV (header action,addr,size,stream) or PyTorch snapshot pickles from
    /// torch.cuda.memory._dump_snapshot, optionally gzip-compressed. Default: the traces
    /// bundled in traces/.
    traces: Vec<PathBuf>,

    /// Policies to compare, comma-separated, each optionally with options in
    /// PYTORCH_CUDA_ALLOC_CONF syntax, e.g. `bfc-classic,torch-native:max_split_size_mb:512`.
    /// May be repeated. Default: every policy (see `coalesce policies`), and the offline
    /// `oracle` with --oracle. Naming `oracle` implies --oracle.
    #[arg(long, short, value_name = "NAME[:OPTIONS][,...]")]
    policy: Vec<String>,

    /// Plan each trace's offline oracle, which knows when every block will be freed, and show
    /// each policy's peak reserved over the oracle's placement ("vs oracle") and over a lower
    /// bound no allocator can beat ("vs bound"); without --policy, also the oracle's own row,
    /// replayed through the same pool (not with --stream-lag: its plan assumes the trace's
    /// order is safe on every stream). Planning takes seconds per large trace (the traces in
    /// parallel, before the replays).
    #[arg(long)]
    oracle: bool,

    /// Print one JSON object per trace and policy per line instead of a table.
    #[arg(long)]
    json: bool,

    /// Write one SVG per trace into DIR: requested and reserved bytes over the replay.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,

    /// Memory of the simulated GPU (e.g. 80GiB); allocations beyond it fail as out-of-memory
    /// after the policy releases its cache.
    #[arg(long, default_value = "80GiB", value_parser = parse_size)]
    capacity: u64,

    /// Also replay a synthetic trace: NAME or NAME@SEED (see `coalesce synth --list`).
    /// May be repeated. With only --synth, the bundled traces are not replayed.
    #[arg(long, value_name = "NAME[@SEED]")]
    synth: Vec<String>,

    /// Timed repeats per trace and policy; the median CPU cost per op is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    repeats: u64,

    /// Ticks (trace operations) a stream needs to finish work enqueued on it; models GPU lag
    /// for stream-ordered reuse across streams. 0: work completes at once.
    #[arg(long, default_value_t = 0)]
    stream_lag: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Replay(args) => run_replay(args),
        Command::Policies => {
            print_policies();
            ExitCode::SUCCESS
        }
        Command::Synth(args) => run_synth(args),
        Command::Bench(args) => run_bench(args),
        Command::Tune(args) => run_tune(args),
    }
}

fn print_policies() {
    for p in REGISTRY.iter().chain(OFFLINE) {
        println!("{:<18} {}", p.name, p.summary);
        for (key, help) in p.options {
            println!("{:<18}   {key}: {help}", "");
        }
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

fn run_replay(args: ReplayArgs) -> ExitCode {
    // The oracle's row needs a safe trace order on every stream: none with stream lag.
    let specs = match policy_specs(&args.policy, args.oracle && args.stream_lag == 0) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    if args.stream_lag > 0 && specs.iter().any(|s| registry::is_offline(&s.name)) {
        return fail(
            EXIT_BAD_INPUT,
            "the oracle's plan assumes the trace's order is safe on every stream: its row needs \
             --stream-lag 0 (--oracle without naming it still shows the gaps to its figures)",
        );
    }
    let paths = if args.traces.is_empty() && !args.synth.is_empty() {
        vec![]
    } else if args.traces.is_empty() {
        match replay::bundled_traces() {
            Ok(p) => p,
            Err(e) => return fail(EXIT_BAD_INPUT, e),
        }
    } else {
        args.traces.clone()
    };
    let mut traces = match replay::load_traces(&paths) {
        Ok(t) => t,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    for name in &args.synth {
        match replay::synth_trace(name) {
            Ok(t) => traces.push(t),
            Err(e) => return fail(EXIT_BAD_INPUT, e),
        }
    }
    for t in &traces {
        report_warnings(t);
    }
    let config = ReplayConfig {
        sim: SimConfig {
            capacity: args.capacity,
            stream_lag: args.stream_lag,
            ..SimConfig::default()
        },
        repeats: args.repeats as usize,
        series_points: 2000,
    };
    let results = match replay::replay_all_with_oracle(&traces, &specs, &config, args.oracle) {
        Ok(r) => r,
        Err(e) => return fail(1, e),
    };
    if args.json {
        for r in &results {
            println!("{}", json::replay_line(r));
        }
    } else {
        println!("{}", table::replay_table(&results));
    }
    match &args.plot {
        Some(dir) => write_plots(dir, &traces, &results.iter().collect::<Vec<_>>()),
        None => ExitCode::SUCCESS,
    }
}

/// Writes one SVG per trace into `dir` from the results of that trace.
fn write_plots(
    dir: &std::path::Path,
    traces: &[coalesce_trace::Trace],
    results: &[&replay::ReplayResult],
) -> ExitCode {
    for t in traces {
        let of_trace: Vec<_> = results
            .iter()
            .copied()
            .filter(|r| r.trace == t.name)
            .collect();
        match plot::write_trace_plot(dir, &of_trace) {
            Ok(path) => eprintln!("wrote {}", path.display()),
            Err(e) => return fail(1, e),
        }
    }
    ExitCode::SUCCESS
}

fn run_bench(args: BenchArgs) -> ExitCode {
    if let Some(BenchTarget::Host(host)) = &args.target {
        return match coalesce_host_bench::main(&host.to_args(), &["bench", "host"]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, format!("{e:#}")),
        };
    }
    let specs = match policy_specs(&args.policy, !args.no_oracle) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let costs = match &args.costs {
        Some(path) => match bench::CostTable::load(path) {
            Ok(c) => c,
            Err(e) => return fail(EXIT_BAD_INPUT, e),
        },
        None => bench::CostTable::bundled(),
    };
    let mut traces = if args.only {
        vec![]
    } else {
        match bench::default_traces(args.seeds) {
            Ok(t) => t,
            Err(e) => return fail(EXIT_BAD_INPUT, e),
        }
    };
    match replay::load_traces(&args.traces) {
        Ok(t) => traces.extend(t),
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    }
    for t in &traces {
        report_warnings(t);
    }
    let config = ReplayConfig {
        sim: SimConfig {
            capacity: args.capacity,
            ..SimConfig::default()
        },
        repeats: args.repeats as usize,
        series_points: 2000,
    };
    let rows = match bench::run(&traces, &specs, &config, &costs, !args.no_oracle) {
        Ok(r) => r,
        Err(e) => return fail(1, e),
    };
    if args.json {
        for r in &rows {
            println!("{}", bench::report::json_line(r));
        }
    } else {
        println!("{}", bench::report::table(&rows));
        let goals = bench::goals(&rows);
        if !goals.is_empty() {
            println!(
                "\n{}\n{}\n{}",
                bench::report::goals_heading(),
                bench::report::goals_table(&goals),
                bench::report::goals_summary(&goals)
            );
        }
    }
    match &args.plot {
        Some(dir) => write_plots(
            dir,
            &traces,
            &rows.iter().map(|r| &r.result).collect::<Vec<_>>(),
        ),
        None => ExitCode::SUCCESS,
    }
}

fn run_tune(args: TuneArgs) -> ExitCode {
    if let Some(n) = args.jobs
        && let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
    {
        return fail(EXIT_BAD_INPUT, format!("--jobs {n}: {e}"));
    }
    let grid = tune::candidates(tune::GridChoice {
        quick: args.quick,
        expandable: !args.no_expandable,
    });
    let config = ReplayConfig {
        sim: SimConfig {
            capacity: args.capacity.unwrap_or(SimConfig::default().capacity),
            ..SimConfig::default()
        },
        repeats: 1,
        series_points: 2,
    };
    for path in &args.traces {
        let traces = match replay::load_trace(path) {
            Ok(t) => t,
            Err(e) => return fail(EXIT_BAD_INPUT, e),
        };
        traces.iter().for_each(report_warnings);
        let bar =
            replay::progress_bar(tune::ops_per_candidate(&traces, &config) * grid.len() as u64);
        bar.set_message(format!("tuning {}", path.display()));
        let start = std::time::Instant::now();
        let tuning = match tune::tune(&traces, &grid, &config, &bar) {
            Ok(t) => t,
            Err(e) => return fail(1, e),
        };
        bar.finish_and_clear();
        let name = replay::trace_name(path);
        let ctx = tune::report::Context {
            trace: &name,
            capacity: config.sim.capacity,
            capacity_given: args.capacity.is_some(),
            searched: grid.len(),
            seconds: start.elapsed().as_secs_f64(),
            threads: rayon::current_num_threads(),
        };
        if args.json {
            println!("{}", tune::report::json(&tuning, &ctx, args.top as usize));
        } else {
            println!("{}", tune::report::text(&tuning, &ctx, args.top as usize));
        }
    }
    ExitCode::SUCCESS
}

fn run_synth(args: SynthArgs) -> ExitCode {
    if args.list {
        for g in synth::GENERATORS {
            println!("{:<26} {}", g.name, g.summary);
        }
        return ExitCode::SUCCESS;
    }
    let name = args.name.expect("clap requires a name without --list");
    let Some(g) = synth::lookup(&name) else {
        return fail(
            EXIT_BAD_INPUT,
            format!("unknown generator {name:?} (see coalesce synth --list)"),
        );
    };
    let events = (g.generate)(args.seed);
    let written = match &args.out {
        None => write_csv(&events, std::io::stdout().lock()),
        Some(path) => std::fs::File::create(path).and_then(|f| {
            let f = std::io::BufWriter::new(f);
            if path.extension().is_some_and(|e| e == "gz") {
                write_csv(
                    &events,
                    flate2::write::GzEncoder::new(f, flate2::Compression::default()),
                )
            } else {
                write_csv(&events, f)
            }
        }),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(
            1,
            format!(
                "writing {}: {e}",
                args.out
                    .as_deref()
                    .map_or("stdout".into(), |p| p.display().to_string())
            ),
        ),
    }
}

/// The policies of `--policy`; without it, every online policy, and the offline ones (built
/// from each trace) when `offline`.
fn policy_specs(args: &[String], offline: bool) -> Result<Vec<PolicySpec>, String> {
    if args.is_empty() {
        let extra = if offline { OFFLINE } else { &[] };
        return Ok(REGISTRY
            .iter()
            .chain(extra)
            .map(|p| PolicySpec::named(p.name))
            .collect());
    }
    let mut specs = Vec::new();
    for a in args {
        specs.extend(registry::parse_list(a).map_err(|e| e.to_string())?);
    }
    Ok(specs)
}

/// Trace oddities on stderr: the first few with their location, then a count.
fn report_warnings(t: &coalesce_trace::Trace) {
    const SHOWN: usize = 5;
    for w in t.warnings.iter().take(SHOWN) {
        eprintln!("warning: {}: {w}", t.name);
    }
    if t.warnings.len() > SHOWN {
        eprintln!(
            "warning: {}: ... and {} more",
            t.name,
            t.warnings.len() - SHOWN
        );
    }
}

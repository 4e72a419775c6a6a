//! The driver: finds the allocators, runs every workload under each of them in child
//! processes (allocator order rotated per repeat), and reports medians as ratios.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Benchmark options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Runs per (workload, allocator); the median is reported.
    pub repeats: usize,
    /// Multiplies every workload's operation count (1.0 = the documented run).
    pub scale: f64,
    /// Which of a, t, b, c, d, e, f to run (see [`WORKLOADS`]).
    pub workloads: Vec<char>,
    /// Thread counts of the size-by-thread grids (a, t).
    pub threads: Vec<usize>,
    /// Arguments that make the current executable run [`crate::main`] (see there); children
    /// are started as `current_exe child_prefix.. workload ...`.
    pub child_prefix: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            repeats: 5,
            scale: 1.0,
            workloads: WORKLOADS.iter().map(|w| w.0).collect(),
            threads: vec![1, 2, 4, 8],
            child_prefix: vec![],
        }
    }
}

/// The workloads: letter and what it measures (the `--help` text).
pub const WORKLOADS: [(char, &str); 7] = [
    (
        'a',
        "malloc+free pairs, memory not touched (the allocator's own cost), sizes 2^3..2^26 x threads",
    ),
    (
        't',
        "malloc+write every byte+free pairs (touched), sizes 2^3..2^26 x threads",
    ),
    (
        'b',
        "producer/consumer, mixed sizes 16 B..256 KiB, every free remote, 2/4/8 threads",
    ),
    (
        'c',
        "larson server, random sizes 16 B..64 KiB and lifetimes, 8 threads",
    ),
    (
        'd',
        "fragmentation: phases of different sizes, 90% freed; peak RSS compared",
    ),
    ('e', "cache-scratch (passive false sharing), 4 threads"),
    (
        'f',
        "large blocks, random 64 KiB..32 MiB, every page written, 2 threads",
    ),
];

const USAGE: &str = "coalesce-host-bench [--repeats N (5)] [--scale F (1.0)] [--quick] \
[--workloads a,t,b,c,d,e,f] [--threads 1,2,4,8]
  --quick   3 repeats at scale 0.3 unless --repeats/--scale are given (a few minutes)";

impl Options {
    /// Parses `--repeats N`, `--scale F`, `--quick`, `--workloads a,t,...`, `--threads 1,2,..`.
    pub fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options::default();
        let (mut quick, mut repeats, mut scale) = (false, None, None);
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().with_context(|| format!("{a} needs a value"));
            match a.as_str() {
                "--repeats" => repeats = Some(val()?.parse().context("--repeats")?),
                "--scale" => scale = Some(val()?.parse().context("--scale")?),
                "--quick" => quick = true,
                "--workloads" => {
                    o.workloads = Vec::new();
                    for w in val()?.split(',') {
                        match WORKLOADS
                            .iter()
                            .find(|k| w.len() == 1 && w.starts_with(k.0))
                        {
                            Some(k) => o.workloads.push(k.0),
                            None => bail!("--workloads: unknown workload {w:?} (a,t,b,c,d,e,f)"),
                        }
                    }
                }
                "--threads" => {
                    o.threads = val()?
                        .split(',')
                        .map(|t| t.parse().context("--threads"))
                        .collect::<Result<_>>()?;
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    for (k, what) in WORKLOADS {
                        println!("  {k}: {what}");
                    }
                    std::process::exit(0);
                }
                other => bail!("unknown option {other}"),
            }
        }
        o.repeats = repeats.unwrap_or(if quick { 3 } else { o.repeats });
        o.scale = scale.unwrap_or(if quick { 0.3 } else { o.scale });
        if o.repeats == 0 {
            bail!("--repeats must be at least 1");
        }
        if o.threads.is_empty() || o.threads.contains(&0) {
            bail!("--threads: counts of at least 1");
        }
        Ok(o)
    }
}

/// An allocator under test: its name and the library to preload (none for glibc).
#[derive(Clone, Debug)]
struct Allocator {
    name: &'static str,
    lib: Option<PathBuf>,
}

const PEERS: [(&str, &str); 3] = [
    ("jemalloc", "libjemalloc.so.2"),
    ("mimalloc", "libmimalloc.so.2"),
    ("tcmalloc", "libtcmalloc_minimal.so.4"),
];
const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The coalesce preload library next to this executable. Under `cargo run` (which sets
/// `CARGO`) it is (re)built first, so it is never stale; otherwise it is built only if missing.
fn coalesce_lib() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    let lib = dir.join("libcoalesce_host_preload.so");
    let cargo = std::env::var("CARGO").ok();
    if cargo.is_some() || !lib.exists() {
        eprintln!("building {} ...", lib.display());
        let mut cmd = Command::new(cargo.as_deref().unwrap_or("cargo"));
        cmd.current_dir(repo_root())
            .args(["build", "-q", "-p", "coalesce-host-preload"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        if !cmd.status()?.success() || !lib.exists() {
            bail!("could not build {}", lib.display());
        }
    }
    Ok(lib)
}

/// glibc, coalesce and the peers that are installed (installing them first if possible).
fn allocators() -> Result<Vec<Allocator>> {
    let missing = PEERS
        .iter()
        .any(|(_, f)| !Path::new(LIBDIR).join(f).exists());
    if missing {
        let script = repo_root().join("scripts/install-host-peers.sh");
        eprintln!("peer allocators missing; running {}", script.display());
        let ok = Command::new("bash")
            .arg(&script)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!(
                "could not install peers (needs root or sudo and Debian's packages); benchmarking those present"
            );
        }
    }
    let mut v = vec![
        Allocator {
            name: "glibc",
            lib: None,
        },
        Allocator {
            name: "coalesce",
            lib: Some(coalesce_lib()?),
        },
    ];
    for (name, f) in PEERS {
        let p = Path::new(LIBDIR).join(f);
        if p.exists() {
            v.push(Allocator { name, lib: Some(p) });
        } else {
            eprintln!("{name}: {} not found, skipped", p.display());
        }
    }
    Ok(v)
}

/// One child run: `metric -> value`.
fn run_child(a: &Allocator, job: &Job, o: &Options) -> Result<BTreeMap<String, f64>> {
    let (workload, scale) = (job.workload, o.scale);
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(&o.child_prefix);
    cmd.args([
        "workload",
        workload,
        &job.threads.to_string(),
        &scale.to_string(),
    ]);
    if let Some(k) = job.size_exp {
        cmd.arg(k.to_string());
    }
    cmd.env_remove("LD_PRELOAD");
    if let Some(lib) = &a.lib {
        cmd.env("LD_PRELOAD", lib);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "{workload} under {} failed: {}\n{}",
            a.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.split_once(' ') {
            m.insert(
                k.to_string(),
                v.trim()
                    .parse()
                    .with_context(|| format!("bad line {line:?}"))?,
            );
        }
    }
    Ok(m)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One child process per allocator and repeat: a workload configuration. For (a) that is
/// one thread count and one size, so all allocators run a row back to back and a change in
/// machine load between rows does not skew one allocator's numbers.
struct Job {
    label: String,
    workload: &'static str,
    threads: usize,
    size_exp: Option<u32>,
}

fn job(label: &str, workload: &'static str, threads: usize) -> Job {
    Job {
        label: label.into(),
        workload,
        threads,
        size_exp: None,
    }
}

/// Size exponents of the grids: 8 B .. 64 MiB.
const SIZE_EXPS: std::ops::RangeInclusive<u32> = 3..=26;

fn jobs(o: &Options) -> Vec<Job> {
    let mut j = vec![];
    for &w in &o.workloads {
        match w {
            'a' | 't' => {
                let (name, workload) = if w == 'a' {
                    ("a own", "own")
                } else {
                    ("t touched", "pairs")
                };
                for &t in &o.threads {
                    j.extend(SIZE_EXPS.map(|k| Job {
                        size_exp: Some(k),
                        ..job(&format!("{name} t={t}"), workload, t)
                    }));
                }
            }
            // `prodcons N` runs N producer/consumer pairs: 2N threads.
            'b' => {
                for pairs in [1, 2, 4] {
                    j.push(job(
                        &format!("b prodcons t={}", 2 * pairs),
                        "prodcons",
                        pairs,
                    ));
                }
            }
            'c' => j.push(job("c larson t=8", "larson", 8)),
            'd' => j.push(job("d fragmentation", "frag", 1)),
            'e' => j.push(job("e cache-scratch t=4", "scratch", 4)),
            'f' => j.push(job("f large t=2", "large", 2)),
            _ => {}
        }
    }
    j
}

/// Runs the benchmark and prints the report (markdown tables) to stdout.
pub fn run(o: &Options) -> Result<()> {
    let allocs = allocators()?;
    let jobs = jobs(o);
    // (job label, metric) -> allocator -> samples
    let mut samples: BTreeMap<(String, String), BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    let mut rss: BTreeMap<(String, &str), Vec<f64>> = BTreeMap::new();
    // A one-line progress display, only when someone is watching.
    let progress = std::io::stderr().is_terminal();
    for r in 0..o.repeats {
        for job in &jobs {
            for i in 0..allocs.len() {
                let a = &allocs[(i + r) % allocs.len()];
                let size = job.size_exp.map(|k| format!(" 2^{k}")).unwrap_or_default();
                if progress {
                    eprint!(
                        "\rrepeat {}/{} {:<14}{:<6} {:<9}",
                        r + 1,
                        o.repeats,
                        job.label,
                        size,
                        a.name
                    );
                }
                let m = run_child(a, job, o)?;
                for (k, v) in m {
                    if k == "peak_rss" {
                        // Peak RSS is reported for b, c and d (an (a) row is one size).
                        if job.size_exp.is_none() {
                            rss.entry((job.label.clone(), a.name)).or_default().push(v);
                        }
                    } else {
                        samples
                            .entry((job.label.clone(), k))
                            .or_default()
                            .entry(a.name)
                            .or_default()
                            .push(v);
                    }
                }
            }
        }
    }
    if progress {
        eprintln!();
    }
    let names: Vec<&str> = allocs.iter().map(|a| a.name).collect();
    let rows: Vec<(String, BTreeMap<&str, f64>)> = samples
        .into_iter()
        .map(|((label, metric), per)| {
            let row = match metric.strip_prefix("pair_") {
                Some(k) => format!("{label} 2^{k}"),
                None => label,
            };
            (row, per.into_iter().map(|(a, v)| (a, median(v))).collect())
        })
        .collect();
    print_report(&names, rows, &rss);
    Ok(())
}

fn best_peer<'a>(names: &[&'a str], row: &BTreeMap<&str, f64>) -> Option<(&'a str, f64)> {
    names
        .iter()
        .filter(|n| **n != "coalesce")
        .filter_map(|n| row.get(n).map(|v| (*n, *v)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

type Rows<'a> = [(String, BTreeMap<&'a str, f64>)];

/// Prints one markdown table of `rows` (label, allocator -> value) with ratios to glibc and
/// to the best peer.
fn print_table(title: &str, unit: &str, names: &[&str], rows: &Rows) {
    if rows.is_empty() {
        return;
    }
    println!("## {title} ({unit}, median)\n");
    print!("| row |");
    for n in names {
        print!(" {n} |");
    }
    println!(" coalesce / glibc | coalesce / best peer (peer) |");
    println!("|---|{}---|---|", "---:|".repeat(names.len()));
    for (label, row) in rows {
        print!("| {label} |");
        for n in names {
            match row.get(n) {
                Some(v) if *v >= 1e4 => print!(" {v:.0} |"),
                Some(v) => print!(" {v:.1} |"),
                None => print!(" - |"),
            }
        }
        let ours = row.get("coalesce").copied().unwrap_or(f64::NAN);
        let glibc = row.get("glibc").copied().unwrap_or(f64::NAN);
        let (peer, best) = best_peer(names, row).unwrap_or(("-", f64::NAN));
        println!(" {:.2} | {:.2} ({peer}) |", ours / glibc, ours / best);
    }
    println!();
}

fn geomean(rows: &Rows, n: &str) -> f64 {
    let logs: Vec<f64> = rows
        .iter()
        .filter_map(|(_, r)| r.get(n))
        .map(|v| v.ln())
        .collect();
    (logs.iter().sum::<f64>() / logs.len() as f64).exp()
}

fn print_report(
    names: &[&str],
    mut rows: Vec<(String, BTreeMap<&str, f64>)>,
    rss: &BTreeMap<(String, &str), Vec<f64>>,
) {
    rows.sort_by_key(|(label, _)| sort_key(label));
    let part = |w: char| -> Vec<_> {
        rows.iter()
            .filter(|(l, _)| l.starts_with(w))
            .cloned()
            .collect()
    };
    let (own, touched) = (part('a'), part('t'));
    let work: Vec<_> = rows
        .iter()
        .filter(|(l, _)| !l.starts_with('a') && !l.starts_with('t'))
        .cloned()
        .collect();
    print_table(
        "a: allocator's own cost, malloc+free pair, memory not touched",
        "ns per pair",
        names,
        &own,
    );
    print_table(
        "t: malloc + write every byte + free",
        "ns per pair",
        names,
        &touched,
    );
    print_table("Workloads b-f", "ns per operation", names, &work);

    println!("## Geometric means (ns)\n");
    println!(
        "| allocator | a own cost | coalesce / this | t touched | coalesce / this | workloads | coalesce / this |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for n in names {
        print!("| {n} |");
        for part in [&own, &touched, &work] {
            if part.is_empty() {
                print!(" - | - |");
            } else {
                let g = geomean(part, n);
                print!(" {g:.1} | {:.3} |", geomean(part, "coalesce") / g);
            }
        }
        println!();
    }

    let mut labels: Vec<&String> = rss.keys().map(|(l, _)| l).collect();
    labels.dedup();
    labels.sort_by_key(|l| sort_key(l));
    let rss_of = |label: &String, n: &str| {
        rss.get(&(label.clone(), n))
            .map(|v| median(v.clone()) / (1u64 << 20) as f64)
    };
    if !labels.is_empty() {
        println!("\n## Peak RSS of the workloads (MiB, median)\n");
        print!("| workload |");
        for n in names {
            print!(" {n} |");
        }
        println!(" coalesce / glibc |");
        println!("|---|{}---:|", "---:|".repeat(names.len()));
        for &label in &labels {
            print!("| {label} |");
            for n in names {
                match rss_of(label, n) {
                    Some(v) => print!(" {v:.1} |"),
                    None => print!(" - |"),
                }
            }
            match (rss_of(label, "coalesce"), rss_of(label, "glibc")) {
                (Some(c), Some(g)) => println!(" {:.2} |", c / g),
                _ => println!(" - |"),
            }
        }
    }

    // The targets of docs/host.md, checked against this run.
    println!("\n## Against the targets\n");
    let ratio = |row: &BTreeMap<&str, f64>, n: &str| {
        row.get("coalesce").copied().unwrap_or(f64::NAN) / row.get(n).copied().unwrap_or(f64::NAN)
    };
    let over: Vec<String> = own
        .iter()
        .chain(&touched)
        .filter(|(_, r)| ratio(r, "glibc") > 1.05)
        .map(|(l, r)| format!("{l} ({:.2}x)", ratio(r, "glibc")))
        .collect();
    let cells = own.len() + touched.len();
    if over.is_empty() {
        println!("- size x thread cells more than 5% slower than glibc: none of {cells}");
    } else {
        println!(
            "- size x thread cells more than 5% slower than glibc: {} of {cells}: {}",
            over.len(),
            over.join(", ")
        );
    }
    if !own.is_empty() {
        let g = geomean(&own, "coalesce");
        for peer in ["tcmalloc", "mimalloc"] {
            if names.contains(&peer) {
                println!(
                    "- own-cost geometric mean vs {peer}: {:.3}x",
                    g / geomean(&own, peer)
                );
            }
        }
    }
    for (label, row) in &work {
        let (peer, best) = best_peer(names, row).unwrap_or(("-", f64::NAN));
        let time = row.get("coalesce").copied().unwrap_or(f64::NAN) / best;
        let mem = match (rss_of(label, "coalesce"), rss_of(label, "glibc")) {
            (Some(c), Some(g)) => format!("{:.2}x glibc", c / g),
            _ => "-".into(),
        };
        println!("- {label}: time {time:.2}x best peer ({peer}), peak RSS {mem}");
    }
}

/// Orders rows: workload (in [`WORKLOADS`] order), thread count, then size exponent.
fn sort_key(label: &str) -> (usize, usize, usize) {
    let head = label.chars().next().unwrap_or(' ');
    let w = WORKLOADS
        .iter()
        .position(|k| k.0 == head)
        .unwrap_or(WORKLOADS.len());
    let num_after = |tag: &str| {
        label
            .split(tag)
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|d| d.parse().ok())
            .unwrap_or(0)
    };
    (w, num_after("t="), num_after("2^"))
}

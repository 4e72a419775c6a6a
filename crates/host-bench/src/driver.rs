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
    /// Which of a, b, c, d to run.
    pub workloads: Vec<char>,
    /// Arguments that make the current executable run [`crate::main`] (see there); children
    /// are started as `current_exe child_prefix.. workload ...`.
    pub child_prefix: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            repeats: 5,
            scale: 1.0,
            workloads: vec!['a', 'b', 'c', 'd'],
            child_prefix: vec![],
        }
    }
}

impl Options {
    /// Parses `--repeats N`, `--scale F`, `--workloads a,b,c,d`.
    pub fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().with_context(|| format!("{a} needs a value"));
            match a.as_str() {
                "--repeats" => o.repeats = val()?.parse().context("--repeats")?,
                "--scale" => o.scale = val()?.parse().context("--scale")?,
                "--workloads" => {
                    o.workloads = Vec::new();
                    for w in val()?.split(',') {
                        match w {
                            "a" | "b" | "c" | "d" => o.workloads.extend(w.chars()),
                            other => {
                                bail!("--workloads: unknown workload {other:?} (a, b, c or d)")
                            }
                        }
                    }
                }
                "-h" | "--help" => {
                    println!(
                        "coalesce-host-bench [--repeats N (5)] [--scale F (1.0)] [--workloads a,b,c,d]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown option {other}"),
            }
        }
        if o.repeats == 0 {
            bail!("--repeats must be at least 1");
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

fn jobs(o: &Options) -> Vec<Job> {
    let mut j = vec![];
    for &w in &o.workloads {
        match w {
            'a' => {
                for t in [1, 2, 4, 8] {
                    j.extend((2..=22).map(|k| Job {
                        size_exp: Some(k),
                        ..job(&format!("a t={t}"), "pairs", t)
                    }));
                }
            }
            'b' => j.push(job("b prodcons 2x2", "prodcons", 2)),
            'c' => j.push(job("c larson t=8", "larson", 8)),
            'd' => j.push(job("d fragmentation", "frag", 1)),
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

fn best_peer(names: &[&str], row: &BTreeMap<&str, f64>) -> Option<(&'static str, f64)> {
    names
        .iter()
        .filter(|n| **n != "coalesce")
        .filter_map(|n| row.get(n).map(|v| (*n, *v)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, v)| {
            (
                PEER_NAMES
                    .iter()
                    .find(|p| **p == n)
                    .copied()
                    .unwrap_or("glibc"),
                v,
            )
        })
}

const PEER_NAMES: [&str; 4] = ["glibc", "jemalloc", "mimalloc", "tcmalloc"];

fn print_report(
    names: &[&str],
    mut rows: Vec<(String, BTreeMap<&str, f64>)>,
    rss: &BTreeMap<(String, &str), Vec<f64>>,
) {
    rows.sort_by_key(|(label, _)| sort_key(label));
    println!("## Time per operation (ns, median)\n");
    print!("| workload |");
    for n in names {
        print!(" {n} |");
    }
    println!(" coalesce / glibc | coalesce / best peer (peer) |");
    println!("|---|{}---|---|", "---:|".repeat(names.len()));
    let mut slower_than_glibc = vec![];
    for (label, row) in &rows {
        print!("| {label} |");
        for n in names {
            match row.get(n) {
                Some(v) => print!(" {v:.1} |"),
                None => print!(" - |"),
            }
        }
        let ours = row.get("coalesce").copied().unwrap_or(f64::NAN);
        let glibc = row.get("glibc").copied().unwrap_or(f64::NAN);
        let (peer, best) = best_peer(names, row).unwrap_or(("-", f64::NAN));
        println!(" {:.2} | {:.2} ({peer}) |", ours / glibc, ours / best);
        if ours > glibc {
            slower_than_glibc.push(format!("{label} ({:.2}x)", ours / glibc));
        }
    }
    println!("\n## Geometric mean of the times above (ns)\n");
    println!("| allocator | geomean | coalesce / this |");
    println!("|---|---:|---:|");
    let geo = |n: &str| {
        let logs: Vec<f64> = rows
            .iter()
            .filter_map(|(_, r)| r.get(n))
            .map(|v| v.ln())
            .collect();
        (logs.iter().sum::<f64>() / logs.len() as f64).exp()
    };
    let ours = geo("coalesce");
    for n in names {
        println!("| {n} | {:.1} | {:.3} |", geo(n), ours / geo(n));
    }
    println!("\n## Peak RSS (MiB, median)\n");
    print!("| workload |");
    for n in names {
        print!(" {n} |");
    }
    println!(" coalesce / jemalloc |");
    println!("|---|{}---:|", "---:|".repeat(names.len()));
    let mut labels: Vec<&String> = rss.keys().map(|(l, _)| l).collect();
    labels.dedup();
    for label in labels {
        print!("| {label} |");
        let get = |n: &str| {
            rss.get(&(label.clone(), n))
                .map(|v| median(v.clone()) / (1u64 << 20) as f64)
        };
        for n in names {
            match get(n) {
                Some(v) => print!(" {v:.1} |"),
                None => print!(" - |"),
            }
        }
        match (get("coalesce"), get("jemalloc")) {
            (Some(c), Some(j)) => println!(" {:.2} |", c / j),
            _ => println!(" - |"),
        }
    }
    println!();
    if slower_than_glibc.is_empty() {
        println!("coalesce is not slower than glibc on any row.");
    } else {
        println!(
            "coalesce is slower than glibc on: {}",
            slower_than_glibc.join(", ")
        );
    }
}

/// Orders rows: workload letter, thread count, then size exponent numerically.
fn sort_key(label: &str) -> (String, usize, usize) {
    let nums: Vec<usize> = label
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    let head = label.chars().next().map(String::from).unwrap_or_default();
    (
        head,
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
    )
}

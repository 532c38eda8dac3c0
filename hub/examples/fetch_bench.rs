//! Measures one fetch of a checkpoint from a Hub: bytes downloaded against the files' size,
//! requests and wall time, for `ranges` or `full`. Used by `scripts/bench-fetch.sh`.
//!
//! ```text
//! fetch_bench --endpoint URL --repo ORG/NAME --revision REV --mode ranges|full|auto
//!             --seeds A..B [--layer-sample 32] [--merge-gap BYTES] [--concurrency N]
//!             (without --merge-gap and --concurrency, both are priced by the measured link)
//!             [--cache DIR] [--plan-gaps G1,G2,...]
//! ```
//!
//! `--plan-gaps` prints, instead of fetching, what ranged fetches with each merge gap would
//! download and how many requests they would make. `full` needs a fresh `--cache` per run
//! (what is cached is not downloaded again). Prints one `key=value` line per result.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use neuromfa_common::network::WeightReader;
use neuromfa_common::{analyze_seed, AnalysisParams};
use neuromfa_hub::fetch::Fetcher;
use neuromfa_hub::ranges::{fetch_for_seeds_with, plan_for_seeds, FetchMode, RangeOptions};
use neuromfa_hub::HubSettings;

struct Args {
    endpoint: String,
    repo: String,
    revision: String,
    mode: FetchMode,
    seeds: Vec<u32>,
    layer_sample: usize,
    merge_gap: Option<u64>,
    concurrency: Option<usize>,
    cache: Option<PathBuf>,
    plan_gaps: Vec<u64>,
    analyze: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        endpoint: String::new(),
        repo: String::new(),
        revision: "main".into(),
        mode: FetchMode::Ranges,
        seeds: (0..10).collect(),
        layer_sample: 32,
        merge_gap: None,
        concurrency: None,
        cache: None,
        plan_gaps: Vec::new(),
        analyze: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--analyze" {
            args.analyze = true;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--endpoint" => args.endpoint = value,
            "--repo" => args.repo = value,
            "--revision" => args.revision = value,
            "--mode" => args.mode = value.parse().map_err(|e: String| bad(&e))?,
            "--seeds" => {
                let (a, b) = value
                    .split_once("..")
                    .ok_or(format!("--seeds {value}: A..B"))?;
                let a: u32 = a.parse().map_err(|e| bad(&e))?;
                let b: u32 = b.parse().map_err(|e| bad(&e))?;
                args.seeds = (a..b).collect();
            }
            "--layer-sample" => args.layer_sample = value.parse().map_err(|e| bad(&e))?,
            "--merge-gap" => args.merge_gap = Some(value.parse().map_err(|e| bad(&e))?),
            "--concurrency" => args.concurrency = Some(value.parse().map_err(|e| bad(&e))?),
            "--cache" => args.cache = Some(PathBuf::from(value)),
            "--plan-gaps" => {
                args.plan_gaps = value
                    .split(',')
                    .map(|g| g.trim().parse().map_err(|e| bad(&e)))
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.endpoint.is_empty() || args.repo.is_empty() {
        return Err("--endpoint and --repo are required".into());
    }
    Ok(args)
}

async fn run(args: Args) -> Result<(), String> {
    let cache = match &args.cache {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("fetch-bench-{}", std::process::id())),
    };
    let fetcher = Fetcher::new(HubSettings {
        endpoint: Some(args.endpoint.clone()),
        token: None,
        cache_dir: Some(cache),
    })
    .map_err(|e| e.to_string())?;
    let params = AnalysisParams {
        layer_sample: args.layer_sample,
        ..AnalysisParams::default()
    };
    let seeds = format!(
        "{}..{}",
        args.seeds.first().copied().unwrap_or(0),
        args.seeds.last().map_or(0, |s| s + 1)
    );

    if !args.plan_gaps.is_empty() {
        return print_plans(&fetcher, &args, &params, &seeds).await;
    }

    let options = RangeOptions {
        mode: args.mode,
        merge_gap: args.merge_gap,
        concurrency: args.concurrency,
        ..RangeOptions::default()
    };
    let started = Instant::now();
    let fetched = fetch_for_seeds_with(
        &fetcher,
        &args.repo,
        &args.revision,
        &params,
        &args.seeds,
        &options,
    )
    .await
    .map_err(|e| e.to_string())?;
    let wall = started.elapsed();
    let m = fetched.metrics();
    println!(
        "fetch mode={} seeds={seeds} merge_gap={} bytes={} file_bytes={} share={:.4} \
         requests={} resolvers={} api={} wall_s={:.2}",
        m.mode,
        args.merge_gap
            .map_or("priced".to_string(), |g| g.to_string()),
        m.bytes_downloaded,
        m.file_bytes,
        m.share(),
        m.requests,
        m.hub_requests.resolvers,
        m.hub_requests.api,
        wall.as_secs_f64()
    );
    if args.analyze {
        let seeds_list = args.seeds.clone();
        let started = Instant::now();
        let alpha0 = tokio::task::spawn_blocking(move || -> Result<Vec<f64>, String> {
            let weights = fetched.open().map_err(|e| e.to_string())?;
            let reader: &dyn WeightReader = weights.as_ref();
            seeds_list
                .iter()
                .map(|&s| {
                    analyze_seed(reader, &params, 0, s)
                        .map(|a| a.result.alpha0)
                        .map_err(|e| e.to_string())
                })
                .collect()
        })
        .await
        .map_err(|e| e.to_string())??;
        println!(
            "analyze seeds={seeds} wall_s={:.2} alpha0_first={:.6}",
            started.elapsed().as_secs_f64(),
            alpha0.first().copied().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

/// Prints what a ranged fetch would download with each of `--plan-gaps`.
async fn print_plans(
    fetcher: &Fetcher,
    args: &Args,
    params: &AnalysisParams,
    seeds: &str,
) -> Result<(), String> {
    for &gap in &args.plan_gaps {
        let plan = plan_for_seeds(
            fetcher,
            &args.repo,
            &args.revision,
            params,
            &args.seeds,
            Some(gap),
        )
        .await
        .map_err(|e| e.to_string())?;
        println!(
            "plan repo={} seeds={seeds} merge_gap={gap} requests={} planned_bytes={} \
             needed_bytes={} file_bytes={} share={:.4} layout_requests={} layout_bytes={}",
            args.repo,
            plan.requests,
            plan.planned_bytes,
            plan.needed_bytes,
            plan.file_bytes,
            plan.share(),
            plan.layout_requests,
            plan.layout_bytes
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    // RUST_LOG=neuromfa_hub=info shows the measured link and the plan it priced, on stderr.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fetch_bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fetch_bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fetch_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

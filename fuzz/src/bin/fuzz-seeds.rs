//! `fuzz-seeds TARGET DIR` writes TARGET's seed corpus and its regression inputs into DIR
//! (for libFuzzer, `scripts/fuzz.sh`); `fuzz-seeds --list` names every target.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag] if flag == "--list" => {
            for target in neuromfa_fuzz::targets::ALL {
                println!("{:<20} {}", target.name, target.about);
            }
            ExitCode::SUCCESS
        }
        [name, dir] => match write_seeds(name, dir) {
            Ok(count) => {
                println!("{count} inputs for {name} in {dir}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("fuzz-seeds: {why}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: fuzz-seeds TARGET DIR | fuzz-seeds --list");
            ExitCode::FAILURE
        }
    }
}

fn write_seeds(name: &str, dir: &str) -> Result<usize, String> {
    let target = neuromfa_fuzz::target(name).ok_or_else(|| format!("no target `{name}`"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir}: {e}"))?;
    let regressions = neuromfa_fuzz::files_in(&neuromfa_fuzz::regressions_dir(target));
    let inputs: Vec<Vec<u8>> = (target.seeds)()
        .into_iter()
        .chain(regressions.into_iter().map(|(_, bytes)| bytes))
        .collect();
    for (i, input) in inputs.iter().enumerate() {
        let path = std::path::Path::new(dir).join(format!("seed-{i:03}"));
        std::fs::write(&path, input)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(inputs.len())
}

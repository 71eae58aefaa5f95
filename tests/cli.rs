//! End-to-end runs of the `ttlora` binary.

use std::process::{Command, Output};

fn ttlora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ttlora"))
        .args(args)
        .output()
        .expect("the ttlora binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn shapes_counts_the_papers_768_shape() {
    let o = ttlora(&[
        "shapes",
        "--in",
        "768",
        "--out",
        "768",
        "--shape",
        "64,4,3|3,4,64",
        "--rank",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("total 990 parameters; LoRA r=8: 12288"),
        "{out}"
    );
    // The same shape given as factor lists (output factors least significant first).
    let o = ttlora(&[
        "shapes",
        "--in",
        "768",
        "--out",
        "768",
        "--input-factors",
        "64,4,3",
        "--output-factors",
        "64,4,3",
    ]);
    assert!(stdout(&o).contains("[64,4,3|3,4,64] r=5"), "{}", stdout(&o));
    assert!(stdout(&o).contains("total 990 parameters"));
}

#[test]
fn shapes_counts_the_reshape_layout() {
    let o = ttlora(&[
        "shapes",
        "--in",
        "768",
        "--out",
        "768",
        "--reshape",
        "12,8,8,8,8,12",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("total 920 parameters"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn shapes_lists_candidates_better_than_lora() {
    let o = ttlora(&[
        "shapes", "--in", "768", "--out", "768", "--rank", "5", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    let rows = rows.as_array().expect("a list");
    assert!(rows.len() >= 5);
    let six = rows
        .iter()
        .find(|r| r["cores"] == 6)
        .expect("a 6-core shape");
    assert!(six["params"].as_u64().unwrap() <= 990);
    assert!(six["ratio_to_lora"].as_f64().unwrap() < 0.1);
}

#[test]
fn shapes_budget_and_core_count() {
    let o = ttlora(&[
        "shapes", "--in", "2048", "--out", "512", "--cores", "7", "--top", "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o)
            .lines()
            .filter(|l| l.trim_start().starts_with("7 "))
            .count(),
        3
    );
    let o = ttlora(&[
        "shapes", "--in", "768", "--out", "768", "--budget", "1000", "--json",
    ]);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).expect("valid JSON");
    for r in rows.as_array().unwrap() {
        assert!(r["params"].as_u64().unwrap() <= 1000);
    }
}

#[test]
fn bad_shape_is_one_clear_error_line() {
    let o = ttlora(&[
        "shapes",
        "--in",
        "768",
        "--out",
        "768",
        "--input-factors",
        "64,4,4",
        "--output-factors",
        "64,4,3",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "ttlora: input factors: factors [64, 4, 4] multiply to 1024, expected 768\n"
    );
    let o = ttlora(&[
        "shapes",
        "--in",
        "768",
        "--out",
        "768",
        "--shape",
        "64,4,3|3,4,64",
        "--ranks",
        "5,0,5,5,5",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("ttlora: tt ranks: ranks must be >= 1"),
        "{}",
        stderr(&o)
    );
    let o = ttlora(&["shapes", "--in", "768", "--out", "768", "--shape", "64,4,3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("separated by `|`"), "{}", stderr(&o));
    // Usage errors are clap's exit code 2.
    let o = ttlora(&["shapes", "--in", "x", "--out", "768"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bench_tt_runs_every_variant() {
    let o = ttlora(&[
        "bench",
        "tt",
        "--sizes",
        "768",
        "--tokens",
        "8",
        "--iters",
        "1",
        "--min-seconds",
        "0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let variants: Vec<&str> = rows
        .iter()
        .map(|r| r["variant"].as_str().unwrap())
        .collect();
    assert_eq!(
        variants,
        [
            "frozen",
            "lora r=8",
            "ttlora factored",
            "ttlora contract",
            "ttlora reconstruct"
        ]
    );
    for r in &rows {
        assert!(r["ms"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(rows[2]["params"], 990);
    assert_eq!(rows[1]["params"], 12288);
}

#[test]
fn cuda_device_on_a_cpu_build_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let o = ttlora(&[
        "bench", "tt", "--device", "cuda", "--sizes", "768", "--tokens", "8",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("needs a build with `--features cuda`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn help_explains_the_shape_convention() {
    let o = ttlora(&["shapes", "--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("core order"));
}

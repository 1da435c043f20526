//! Write a synthetic, hash-chained decision log: `audit_fixture FILE N` (N events, 0.6 s apart,
//! a mix of callers, paths, outcomes and two policy revisions). For measuring
//! `arbiter audit summary|verify|serve` on large logs.

use std::io::Write;

use arbiter_engine::audit::chain::{GENESIS, seal};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(file), Some(n)) = (
        args.get(1),
        args.get(2).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: audit_fixture FILE N");
        std::process::exit(2);
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    let mut prev = GENESIS.to_string();
    let start = 1_795_000_000i64;
    for i in 0..n {
        let (line, hash) = seal(arbiter_benches::synthetic_event(i, start), &prev);
        out.write_all(&line)?;
        prev = hash;
    }
    out.flush()
}

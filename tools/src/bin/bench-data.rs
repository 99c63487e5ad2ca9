//! `bench-data`: writes the benchmark inputs quickly and reproducibly (fixed seeds).
//!
//! - `random SIZE FILE`: pseudo-random bytes (incompressible for zstd);
//! - `text SIZE FILE`: log-like text lines (compresses about 3–4× with zstd level 3);
//! - `files COUNT SIZE DIR`: COUNT files of SIZE random bytes in DIR (`f00000.bin`, …).
//!
//! SIZE takes a `K`, `M` or `G` suffix (powers of 1024).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Writes the p2pd benchmark inputs (fixed seeds, reproducible)")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Pseudo-random, incompressible bytes.
    Random {
        /// Size, e.g. 1G, 256M, 4K.
        #[arg(value_parser = parse_size)]
        size: u64,
        /// Output file.
        file: PathBuf,
    },
    /// Log-like text lines (compressible).
    Text {
        /// Size, e.g. 1G, 256M.
        #[arg(value_parser = parse_size)]
        size: u64,
        /// Output file.
        file: PathBuf,
    },
    /// Many small random files in one directory.
    Files {
        /// Number of files.
        count: u32,
        /// Size of each file, e.g. 4K.
        #[arg(value_parser = parse_size)]
        size: u64,
        /// Output directory (created).
        dir: PathBuf,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("{s:?} is not a size: {e}"))
}

/// wyrand: fast, statistically good enough that zstd finds nothing to compress.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn write_random(size: u64, file: &PathBuf, seed: u64) -> std::io::Result<()> {
    let mut rng = Rng(seed);
    let mut out = File::create(file)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn write_text(size: u64, file: &PathBuf) -> std::io::Result<()> {
    const LEVELS: [&str; 4] = ["INFO", "INFO", "DEBUG", "WARN"];
    const PATHS: [&str; 6] = [
        "/api/v1/items",
        "/api/v1/users",
        "/api/v1/orders",
        "/static/app.js",
        "/healthz",
        "/api/v2/search",
    ];
    const STATUS: [u32; 5] = [200, 200, 200, 304, 404];
    let mut rng = Rng(0x5eed_7e47);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(file)?);
    let mut written = 0u64;
    let mut ms: u64 = 1_714_567_890_000;
    let mut line = String::with_capacity(256);
    while written < size {
        use std::fmt::Write as _;
        line.clear();
        ms += rng.below(40);
        let (secs, milli) = (ms / 1000, ms % 1000);
        let _ = writeln!(
            line,
            "{secs}.{milli:03} {level} [worker-{w}] request id={id:016x} method=GET path={p}/{item} status={st} bytes={b} dur_ms={d}.{dd} peer=10.0.{o3}.{o4}",
            level = LEVELS[rng.below(4) as usize],
            w = rng.below(16),
            id = rng.next(),
            p = PATHS[rng.below(6) as usize],
            item = rng.below(100_000),
            st = STATUS[rng.below(5) as usize],
            b = rng.below(65_536),
            d = rng.below(250),
            dd = rng.below(10),
            o3 = rng.below(4),
            o4 = rng.below(255),
        );
        let take = (size - written).min(line.len() as u64) as usize;
        out.write_all(&line.as_bytes()[..take])?;
        written += take as u64;
    }
    out.flush()
}

fn write_files(count: u32, size: u64, dir: &PathBuf) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut rng = Rng(0xf11e5);
    let mut buf = vec![0u8; size as usize];
    for i in 0..count {
        rng.fill(&mut buf);
        fs::write(dir.join(format!("f{i:05}.bin")), &buf)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match &cli.what {
        What::Random { size, file } => write_random(*size, file, 0x0123_4567_89ab_cdef),
        What::Text { size, file } => write_text(*size, file),
        What::Files { count, size, dir } => write_files(*count, *size, dir),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-data: {e}");
            ExitCode::FAILURE
        }
    }
}

//! Writes the shipped digits (`data/digits.csv`: 64 pixels of 0..16 and a label per row) as
//! 8x8 grey PNG images in class folders, the layout of `data.kind = "image_folder"`:
//!
//! ```text
//! cargo run --example digits_images -- data/digits.csv data/digits-images
//! ```
//!
//! Row `i` (0-based, after the header) becomes `<label>/<i, 4 digits>.png`, pixel `v` the grey
//! level `round(v * 255 / 16)`. `data/digits-images/` in the repository was written this way
//! (`tests/it/burn_way.rs` checks it against the csv).

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [csv, out] = args.as_slice() else {
        eprintln!("usage: digits_images <digits.csv> <output folder>");
        return ExitCode::from(2);
    };
    match write(Path::new(csv), Path::new(out)) {
        Ok(n) => {
            println!("wrote {n} images into {out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The grey level of a digits pixel (0..=16).
pub fn grey(v: u32) -> u8 {
    ((v * 255 + 8) / 16) as u8
}

fn write(csv: &Path, out: &Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(csv).map_err(|e| format!("cannot read `{}`: {e}", csv.display()))?;
    let mut n = 0;
    for (i, line) in text.lines().skip(1).filter(|l| !l.trim().is_empty()).enumerate() {
        let values: Vec<u32> = line
            .split(',')
            .map(|v| v.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("`{}`, data row {i}: {e}", csv.display()))?;
        let [pixels @ .., label] = values.as_slice() else { unreachable!("a row has fields") };
        if pixels.len() != 64 || pixels.iter().any(|&v| v > 16) {
            return Err(format!("`{}`, data row {i}: expected 64 pixels of 0..16 and a label", csv.display()));
        }
        let dir = out.join(label.to_string());
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        let image = image::GrayImage::from_raw(8, 8, pixels.iter().map(|&v| grey(v)).collect()).expect("64 pixels");
        let path = dir.join(format!("{i:04}.png"));
        image.save(&path).map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
        n += 1;
    }
    Ok(n)
}

//! Garbage input: mutated recipes and random overrides never panic.

use super::*;

/// Small deterministic PRNG for the garbage-input test.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Mutated recipes and random overrides never panic; every error renders as one paragraph.
#[test]
fn garbage_never_panics() {
    let seed_text = to_toml_string(&ok(
        "[model]\nx = { a = [1, 2] }\n[faults]\noom_at = [{ step = 3, phase = \"forward\" }]\n[micro_batch]\nmax = 8\n",
    ));
    let alphabet: Vec<char> = "[]{}=\".,'#\n\t 0123456789-+eE_aZé\\ntruefalsinf".chars().collect();
    let keys: Vec<String> = keys::sections()
        .iter()
        .flat_map(|s| s.keys.iter().map(move |k| format!("{}.{}", s.name, k.name)))
        .chain(["model.q".to_string(), "x".into(), "".into(), "a.b.c".into()])
        .collect();
    let values =
        ["0", "-1", "1e400", "nan", "\"", "[", "{ step = 0 }", "auto", "", "99999999999999999999", "[1, \"a\"]", "=="];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for _ in 0..1500 {
        let mut chars: Vec<char> = seed_text.chars().collect();
        for _ in 0..1 + rng.below(4) {
            let pos = rng.below(chars.len() + 1);
            match rng.below(3) {
                0 if pos < chars.len() => {
                    chars.remove(pos);
                }
                1 if pos < chars.len() => chars[pos] = alphabet[rng.below(alphabet.len())],
                _ => chars.insert(pos.min(chars.len()), alphabet[rng.below(alphabet.len())]),
            }
        }
        let text: String = chars.into_iter().collect();
        let o: Vec<String> = (0..rng.below(3))
            .map(|_| format!("{}={}", keys[rng.below(keys.len())], values[rng.below(values.len())]))
            .collect();
        match parse(&text, "fuzz.toml", Path::new("."), &o) {
            Ok(r) => {
                // Compared as text: a model key may hold NaN, which is not equal to itself.
                let again = parse(&to_toml_string(&r), "resolved", Path::new("."), &[])
                    .unwrap_or_else(|e| panic!("{e}\n{text}\n{o:?}"));
                assert_eq!(to_toml_string(&again), to_toml_string(&r), "{text}\n{o:?}");
                let _ = fingerprint(&r);
            }
            Err(e) => {
                let s = e.to_string();
                assert!(!s.contains('\n') && s.contains(" Fix: "), "{s}");
            }
        }
    }
    // Arbitrary bytes (as lossy text) too.
    for _ in 0..300 {
        let bytes: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse(&text, "bytes", Path::new("."), &[text.to_string()]);
    }
}

//! Deterministic mutation fuzzing for parser tests: byte flips, truncations, inserted
//! separators and digits, duplicated tails, applied 1 to 4 at a time.

const NASTY: &[u8] = b" :=\n\t-/\\0123456789\xffmax.";

/// Calls `parse` on `rounds` mutations of `original`, reproducibly from `seed`.
pub fn mutations(original: &str, rounds: usize, seed: u64, mut parse: impl FnMut(&str)) {
    let mut state = seed | 1;
    let mut random = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound.max(1) as u64) as usize
    };
    for _ in 0..rounds {
        let mut bytes = original.as_bytes().to_vec();
        for _ in 0..=random(4) {
            match random(4) {
                0 if !bytes.is_empty() => {
                    let at = random(bytes.len());
                    bytes[at] = NASTY[random(NASTY.len())];
                }
                1 => bytes.truncate(random(bytes.len() + 1)),
                2 => {
                    let at = random(bytes.len() + 1);
                    bytes.insert(at, NASTY[random(NASTY.len())]);
                }
                _ => {
                    let copy = bytes.clone();
                    bytes.extend_from_slice(&copy[random(copy.len() + 1)..]);
                }
            }
        }
        parse(&String::from_utf8_lossy(&bytes));
    }
}

//! The digests of the stored evidence blobs, held in memory so that each of the millions of
//! "names a blob" checks of `verify` is a lookup rather than a query. A digest is uniformly
//! random, so its own bits place it: 16 shards by its first hex digit (one per slice of the
//! evidence pass, so the threads reading the slices build them), and in each an open-addressing
//! table of the 32-byte digests themselves, at most half full, where a lookup nearly always
//! reads one cache line.

use crate::store::TextSlice;

/// A SHA-256 digest as four big-endian words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Digest([u64; 4]);

impl Digest {
    /// The digest a hash written as 64 lowercase hex characters names; `None` for any other text.
    pub(super) fn parse(hash: &str) -> Option<Digest> {
        let bytes = hash.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        // A table lookup per digit rather than a branch: hex digits are random, so a branch on
        // digit or letter would be mispredicted every other time.
        let mut words = [0u64; 4];
        let mut invalid = 0;
        for (word, digits) in words.iter_mut().zip(bytes.chunks_exact(16)) {
            for &digit in digits {
                let nibble = NIBBLE[usize::from(digit)];
                invalid |= nibble;
                *word = *word << 4 | u64::from(nibble & 0xf);
            }
        }
        (invalid & NOT_HEX == 0).then_some(Digest(words))
    }

    /// Its first hex digit.
    fn shard(&self) -> usize {
        (self.0[0] >> 60) as usize
    }
}

/// Marks a byte that is not a lowercase hex digit in `NIBBLE`.
const NOT_HEX: u8 = 0x80;

/// The value of each lowercase hex digit, `NOT_HEX` for every other byte.
const NIBBLE: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Every blob's digest, by first hex digit.
#[derive(Default)]
pub(super) struct EvidenceIndex {
    shards: Vec<DigestSet>,
}

impl EvidenceIndex {
    /// The index of the sets the slices of `TextSlice::by_hex_digit` gathered, in order: the
    /// NULL keys (never a hash), then one slice per first hex digit, which holds exactly the
    /// hashes that start with it.
    pub(super) fn from_slices(slices: Vec<DigestSet>) -> EvidenceIndex {
        debug_assert_eq!(slices.len(), TextSlice::by_hex_digit().len());
        let shards: Vec<DigestSet> = slices.into_iter().skip(1).collect();
        debug_assert!(shards
            .iter()
            .enumerate()
            .all(|(nibble, set)| set.digests().all(|d| d.shard() == nibble)));
        EvidenceIndex { shards }
    }

    /// Whether `hash` names a stored blob.
    pub(super) fn contains(&self, hash: &str) -> bool {
        Digest::parse(hash).is_some_and(|digest| {
            self.shards
                .get(digest.shard())
                .is_some_and(|set| set.contains(&digest))
        })
    }
}

/// A set of digests: open addressing with linear probing over a power-of-two table of twice as
/// many slots as digests; the all-zero digest, which marks an empty slot, is kept aside.
#[derive(Default)]
pub(super) struct DigestSet {
    slots: Vec<[u64; 4]>,
    has_zero: bool,
}

impl DigestSet {
    pub(super) fn new(digests: &[Digest]) -> DigestSet {
        let capacity = (2 * digests.len()).next_power_of_two().max(16);
        let mut set = DigestSet {
            slots: vec![[0; 4]; capacity],
            has_zero: false,
        };
        for digest in digests {
            set.insert(digest);
        }
        set
    }

    fn insert(&mut self, digest: &Digest) {
        if digest.0 == [0; 4] {
            self.has_zero = true;
            return;
        }
        let mask = self.slots.len() - 1;
        let mut at = digest.0[3] as usize & mask;
        loop {
            let slot = &mut self.slots[at];
            if *slot == digest.0 {
                return;
            }
            if *slot == [0; 4] {
                *slot = digest.0;
                return;
            }
            at = (at + 1) & mask;
        }
    }

    pub(super) fn contains(&self, digest: &Digest) -> bool {
        if digest.0 == [0; 4] {
            return self.has_zero;
        }
        let Some(mask) = self.slots.len().checked_sub(1) else {
            return false;
        };
        let mut at = digest.0[3] as usize & mask;
        loop {
            let slot = &self.slots[at];
            if *slot == digest.0 {
                return true;
            }
            if *slot == [0; 4] {
                return false;
            }
            at = (at + 1) & mask;
        }
    }

    fn digests(&self) -> impl Iterator<Item = Digest> + '_ {
        let zero = self.has_zero.then_some(Digest([0; 4]));
        self.slots
            .iter()
            .filter(|slot| **slot != [0; 4])
            .map(|slot| Digest(*slot))
            .chain(zero)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(seed: u64) -> String {
        let word = |k: u64| {
            seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(k as u32 * 13)
                ^ k
        };
        format!(
            "{:016x}{:016x}{:016x}{:016x}",
            word(1),
            word(2),
            word(3),
            word(4)
        )
    }

    #[test]
    fn a_set_holds_exactly_what_was_put_in_it() {
        let inside: Vec<String> = (0..5000).map(hex).collect();
        let digests: Vec<Digest> = inside.iter().filter_map(|h| Digest::parse(h)).collect();
        assert_eq!(digests.len(), inside.len());
        let set = DigestSet::new(&digests);
        assert!(digests.iter().all(|d| set.contains(d)));
        assert!((5000..10_000)
            .map(hex)
            .all(|h| !set.contains(&Digest::parse(&h).unwrap())));
        assert!(!set.contains(&Digest([0; 4])));
        let with_zero = DigestSet::new(&[Digest([0; 4]), digests[0]]);
        assert!(with_zero.contains(&Digest([0; 4])) && with_zero.contains(&digests[0]));
        assert!(!DigestSet::default().contains(&digests[0]));
    }

    #[test]
    fn only_64_lowercase_hex_digits_are_a_digest() {
        let hash = hex(7);
        let digest = Digest::parse(&hash).unwrap();
        assert_eq!(
            format!(
                "{:016x}{:016x}{:016x}{:016x}",
                digest.0[0], digest.0[1], digest.0[2], digest.0[3]
            ),
            hash
        );
        assert_eq!(Digest::parse(&hash.to_uppercase()), None);
        assert_eq!(Digest::parse(&hash[1..]), None);
        assert_eq!(Digest::parse(&format!("{hash}0")), None);
        assert_eq!(Digest::parse(&format!("{}g", &hash[1..])), None);
        assert_eq!(Digest::parse(""), None);
        for byte in 0..=255u8 {
            let mut text = hash.clone().into_bytes();
            text[17] = byte;
            let parsed = String::from_utf8(text).ok().and_then(|t| Digest::parse(&t));
            let is_digit = byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte);
            assert_eq!(parsed.is_some(), is_digit, "byte {byte:#04x}");
        }
    }

    #[test]
    fn a_hash_is_looked_up_in_the_shard_of_its_first_digit() {
        let hashes: Vec<String> = (0..1000).map(hex).collect();
        let mut by_digit: Vec<Vec<Digest>> = vec![Vec::new(); 17];
        for hash in &hashes {
            let digest = Digest::parse(hash).unwrap();
            by_digit[1 + digest.shard()].push(digest);
        }
        let index =
            EvidenceIndex::from_slices(by_digit.iter().map(|d| DigestSet::new(d)).collect());
        assert!(hashes.iter().all(|h| index.contains(h)));
        assert!(!index.contains(&hex(5000)));
        assert!(!index.contains("not a hash"));
    }
}

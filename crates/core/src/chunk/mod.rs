//! Content-defined chunking: cuts a byte stream into chunks whose boundaries depend only on the
//! content (FastCDC 2020 with a secret gear seed), so an insertion shifts only nearby boundaries.
//!
//! Pure and deterministic: the same [`ChunkerParams`], seed and bytes always give the same
//! boundaries. Golden tests pin them, because a change here silently breaks deduplication.

use std::io::{self, Read};

use fastcdc::v2020::{cut_gear, get_gear_with_seed, MASKS};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The chunker settings stored in the repository config (`docs/format.md` §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Always "fastcdc-v2020".
    pub algorithm: ChunkAlgorithm,
    /// Smallest chunk, except a file's last.
    pub min_size: u32,
    /// Target average.
    pub avg_size: u32,
    /// Largest chunk.
    pub max_size: u32,
    /// FastCDC normalization level, 0–3.
    pub normalization: u8,
}

/// The only supported algorithm; an enum so the config names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkAlgorithm {
    /// FastCDC, the 2020 paper's variant (`fastcdc::v2020`).
    #[serde(rename = "fastcdc-v2020")]
    FastCdc2020,
}

impl Default for ChunkerParams {
    /// 128 KiB / 512 KiB / 2 MiB, normalization 1: chosen by measurement, see `docs/format.md` §10.
    fn default() -> Self {
        ChunkerParams {
            algorithm: ChunkAlgorithm::FastCdc2020,
            min_size: 128 << 10,
            avg_size: 512 << 10,
            max_size: 2 << 20,
            normalization: 1,
        }
    }
}

impl ChunkerParams {
    /// Checks the sizes against what FastCDC 2020 accepts.
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min_size)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg_size)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&self.max_size)
            && self.min_size <= self.avg_size
            && self.avg_size <= self.max_size
            && self.normalization <= 3;
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "chunker sizes min {} avg {} max {} (normalization {}) are outside FastCDC 2020's limits \
                 (min 64..1Mi, avg 256..4Mi, max 1Ki..16Mi, min <= avg <= max, level <= 3)",
                self.min_size, self.avg_size, self.max_size, self.normalization
            )))
        }
    }
}

/// A configured chunker; cheap to share, holds the seeded gear tables.
#[derive(Clone)]
pub struct Chunker {
    params: ChunkerParams,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    mask_s: u64,
    mask_l: u64,
}

impl Chunker {
    /// A chunker for validated `params` and the repository's secret `seed`.
    pub fn new(params: ChunkerParams, seed: u64) -> Result<Self> {
        params.validate()?;
        let (gear, gear_ls) = get_gear_with_seed(seed);
        let bits = fastcdc::v2020::logarithm2(params.avg_size);
        let level = u32::from(params.normalization);
        Ok(Chunker {
            params,
            gear,
            gear_ls,
            mask_s: MASKS[(bits + level) as usize],
            mask_l: MASKS[(bits - level) as usize],
        })
    }

    /// The settings.
    pub fn params(&self) -> &ChunkerParams {
        &self.params
    }

    /// Length of the first chunk of `data`, where `data` holds at least `max_size` bytes or
    /// everything up to the end of the stream.
    pub fn cut(&self, data: &[u8]) -> usize {
        let p = &self.params;
        cut_gear(
            data,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        )
        .1
    }

    /// A buffer sized for [`Chunker::stream`]; reuse it across files.
    pub fn buffer(&self) -> Vec<u8> {
        vec![0; 2 * self.params.max_size as usize]
    }

    /// Reads `source` to its end and calls `each` with every chunk in order. Memory is bounded
    /// by `buf` (from [`Chunker::buffer`]); the returned value is the number of bytes read.
    pub fn stream<R: Read + ?Sized, F>(
        &self,
        source: &mut R,
        buf: &mut [u8],
        mut each: F,
    ) -> io::Result<u64>
    where
        F: FnMut(&[u8]) -> io::Result<()>,
    {
        let max = self.params.max_size as usize;
        assert!(buf.len() >= 2 * max, "chunk buffer too small");
        let (mut start, mut end, mut eof, mut total) = (0usize, 0usize, false, 0u64);
        loop {
            while !eof && end - start < max {
                if buf.len() - end < max {
                    buf.copy_within(start..end, 0);
                    end -= start;
                    start = 0;
                }
                match source.read(&mut buf[end..]) {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        end += n;
                        total += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if start == end {
                return Ok(total);
            }
            let n = self.cut(&buf[start..end]);
            each(&buf[start..start + n])?;
            start += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn seeded(len: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    fn lengths(c: &Chunker, data: &[u8], read_size: usize) -> Vec<usize> {
        struct Slow<'a>(&'a [u8], usize);
        impl Read for Slow<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                let n = b.len().min(self.1).min(self.0.len());
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = vec![];
        let mut buf = c.buffer();
        c.stream(&mut Slow(data, read_size), &mut buf, |ch| {
            out.push(ch.len());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn stream_matches_fastcdc_and_is_independent_of_read_sizes() {
        let p = ChunkerParams {
            min_size: 4096,
            avg_size: 16384,
            max_size: 65536,
            ..ChunkerParams::default()
        };
        let data = seeded(1 << 20, 7);
        let c = Chunker::new(p, 42).unwrap();
        let reference: Vec<usize> = fastcdc::v2020::FastCDC::with_level_and_seed(
            &data,
            4096,
            16384,
            65536,
            fastcdc::v2020::Normalization::Level1,
            42,
        )
        .map(|c| c.length)
        .collect();
        assert_eq!(lengths(&c, &data, 1 << 20), reference);
        assert_eq!(lengths(&c, &data, 1000), reference);
        assert_eq!(lengths(&c, &data, 7), reference);
        assert_eq!(reference.iter().sum::<usize>(), data.len());
    }

    #[test]
    fn empty_and_tiny_inputs() {
        let c = Chunker::new(ChunkerParams::default(), 1).unwrap();
        assert!(lengths(&c, &[], 10).is_empty());
        assert_eq!(lengths(&c, b"abc", 10), vec![3]);
    }

    #[test]
    fn insertion_only_moves_nearby_boundaries() {
        let p = ChunkerParams {
            min_size: 2048,
            avg_size: 8192,
            max_size: 32768,
            ..ChunkerParams::default()
        };
        let c = Chunker::new(p, 99).unwrap();
        let a = seeded(1 << 20, 3);
        let mut b = a.clone();
        b.splice(500_000..500_000, b"inserted bytes".iter().copied());
        let la = lengths(&c, &a, 1 << 16);
        let lb = lengths(&c, &b, 1 << 16);
        let same = la.iter().zip(&lb).take_while(|(x, y)| x == y).count();
        let same_tail = la
            .iter()
            .rev()
            .zip(lb.iter().rev())
            .take_while(|(x, y)| x == y)
            .count();
        assert!(
            same + same_tail + 3 >= la.len(),
            "{same} + {same_tail} of {}",
            la.len()
        );
    }

    #[test]
    fn rejects_out_of_range_params() {
        let p = ChunkerParams {
            min_size: 10,
            ..ChunkerParams::default()
        };
        assert!(Chunker::new(p, 1).is_err());
    }
}

//! [`ChunkingParams`]: the FastCDC sizes, and why a set of them is invalid.

use std::fmt;

use fastcdc::v2020::{self};

/// FastCDC sizes, in bytes. Configured as `[chunking]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkingParams {
    /// NARs smaller than this stay one chunk. At most `max_size`.
    pub nar_size_threshold: u32,
    /// Smallest chunk FastCDC cuts (the last chunk of a NAR may be smaller).
    pub min_size: u32,
    /// FastCDC's target average.
    pub avg_size: u32,
    /// Largest chunk; bounds the chunker's memory.
    pub max_size: u32,
}

impl Default for ChunkingParams {
    /// 64 KiB threshold; 16 / 64 / 256 KiB chunks.
    fn default() -> Self {
        Self {
            nar_size_threshold: 64 * 1024,
            min_size: 16 * 1024,
            avg_size: 64 * 1024,
            max_size: 256 * 1024,
        }
    }
}

/// One thing wrong with [`ChunkingParams`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkingProblem {
    /// Outside what FastCDC 2020 supports.
    #[error("{field} is {value}, outside {min}..={max}")]
    OutOfRange {
        /// Config name of the field.
        field: &'static str,
        /// Given value.
        value: u32,
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
    },
    /// FastCDC scans two bytes at a time; odd sizes shift its cut points.
    #[error("{field} is {value}, must be even")]
    Odd {
        /// Config name of the field.
        field: &'static str,
        /// Given value.
        value: u32,
    },
    /// The sizes are not ordered.
    #[error("need min-size <= avg-size <= max-size (got {min} / {avg} / {max})")]
    Order {
        /// `min_size`.
        min: u32,
        /// `avg_size`.
        avg: u32,
        /// `max_size`.
        max: u32,
    },
    /// A one-chunk NAR could exceed `max_size`.
    #[error("nar-size-threshold {threshold} exceeds max-size {max}")]
    ThresholdAboveMax {
        /// `nar_size_threshold`.
        threshold: u32,
        /// `max_size`.
        max: u32,
    },
}

/// Every problem [`ChunkingParams::validate`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidChunkingParams(pub Vec<ChunkingProblem>);

impl fmt::Display for InvalidChunkingParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid chunking parameters: ")?;
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidChunkingParams {}

impl ChunkingParams {
    /// Checks the sizes against FastCDC's limits and each other; reports
    /// every problem at once.
    pub fn validate(&self) -> Result<(), InvalidChunkingParams> {
        let mut problems = Vec::new();
        let limits = [
            (
                "min-size",
                self.min_size,
                v2020::MINIMUM_MIN,
                v2020::MINIMUM_MAX,
            ),
            (
                "avg-size",
                self.avg_size,
                v2020::AVERAGE_MIN,
                v2020::AVERAGE_MAX,
            ),
            (
                "max-size",
                self.max_size,
                v2020::MAXIMUM_MIN,
                v2020::MAXIMUM_MAX,
            ),
        ];
        for (field, value, min, max) in limits {
            let (min, max) = (min as u32, max as u32);
            if !(min..=max).contains(&value) {
                problems.push(ChunkingProblem::OutOfRange {
                    field,
                    value,
                    min,
                    max,
                });
            }
            if value % 2 == 1 {
                problems.push(ChunkingProblem::Odd { field, value });
            }
        }
        if !(self.min_size <= self.avg_size && self.avg_size <= self.max_size) {
            problems.push(ChunkingProblem::Order {
                min: self.min_size,
                avg: self.avg_size,
                max: self.max_size,
            });
        }
        if self.nar_size_threshold > self.max_size {
            problems.push(ChunkingProblem::ThresholdAboveMax {
                threshold: self.nar_size_threshold,
                max: self.max_size,
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidChunkingParams(problems))
        }
    }
}

//! Pricing of cross-zone traffic, in exact integer arithmetic.
//!
//! # Pricing rules
//!
//! AWS bills traffic between two availability zones of one region on **both
//! sides**: $0.01 per GB out of the sending AZ, plus $0.01 per GB into the
//! receiving AZ, so one byte that crosses zones costs $0.02 per GB in total.
//! AWS's price lists say "GB"; netscope reads that as 10^9 bytes and prices
//! per GiB (2^30 bytes) internally, converting exactly: $0.01/GB is
//! $0.01073741824/GiB. If your bill is computed on binary gigabytes, set the
//! price per GiB to the billed figure instead ([`Price::per_gib`]).
//!
//! - Only traffic whose two zones are known and differ is billed.
//! - Traffic between regions is not billed at the inter-AZ price (AWS bills
//!   it as inter-region transfer, out of the source region only, at a price
//!   that depends on the pair of regions). netscope counts it in the
//!   cross-region counters and leaves pricing it to the user. A region that is
//!   unknown on either side is taken to be the same region.
//! - Each side has its own configurable price ([`Pricing`]); set one to zero
//!   to count only the other side (for example when the far side of a custom
//!   endpoint is another account's bill).
//!
//! Amounts are kept as integer picodollars per data unit and converted to
//! whole microdollars with the remainder carried, so the microdollar total is
//! always exactly `floor(total_bytes * price)`, however the bytes were split
//! into flows.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes in a GB, as cloud price lists use it (SI, 10^9 bytes).
pub const BYTES_PER_GB: u64 = 1_000_000_000;
/// Bytes in a GiB (2^30 bytes).
pub const BYTES_PER_GIB: u64 = 1 << 30;
/// Picodollars in a dollar.
pub const PICODOLLARS_PER_DOLLAR: u64 = 1_000_000_000_000;
/// Picodollars in a microdollar, the unit of the cost counter.
pub const PICODOLLARS_PER_MICRODOLLAR: u64 = 1_000_000;

/// The highest price accepted, in dollars per data unit. Keeps every product
/// of bytes and price inside 128-bit arithmetic with a wide margin.
pub const MAX_DOLLARS_PER_UNIT: f64 = 1_000.0;

/// Which side of a cross-zone transfer a charge belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BillingSide {
    /// Out of the sending zone (the source endpoint's zone).
    Sending,
    /// Into the receiving zone (the destination endpoint's zone).
    Receiving,
}

impl BillingSide {
    /// Both sides, sending first.
    pub const BOTH: [BillingSide; 2] = [BillingSide::Sending, BillingSide::Receiving];

    /// The `side` label value: `sending` or `receiving`.
    pub fn as_str(self) -> &'static str {
        match self {
            BillingSide::Sending => "sending",
            BillingSide::Receiving => "receiving",
        }
    }
}

impl fmt::Display for BillingSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors from building a [`Price`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CostError {
    /// The amount is NaN, infinite or negative.
    #[error("price of {dollars} dollars per {unit} is not a finite, non-negative amount")]
    InvalidPrice {
        /// The rejected amount.
        dollars: f64,
        /// `GB` or `GiB`.
        unit: &'static str,
    },
    /// The amount is above [`MAX_DOLLARS_PER_UNIT`].
    #[error("price of {dollars} dollars per {unit} is above the limit of {max} dollars")]
    TooLarge {
        /// The rejected amount.
        dollars: f64,
        /// `GB` or `GiB`.
        unit: &'static str,
        /// The limit.
        max: f64,
    },
}

/// A price for data transfer: whole picodollars per data unit (GB or GiB),
/// so that no rounding happens until the final conversion to microdollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Price {
    picodollars: u64,
    unit_bytes: u64,
}

impl Price {
    /// Nothing is charged.
    pub const FREE: Price = Price {
        picodollars: 0,
        unit_bytes: BYTES_PER_GIB,
    };

    /// AWS's inter-AZ price for one side: $0.01 per GB (10^9 bytes).
    pub const AWS_INTER_AZ_PER_SIDE: Price = Price {
        picodollars: 10_000_000_000,
        unit_bytes: BYTES_PER_GB,
    };

    /// A price in dollars per GiB (2^30 bytes), rounded to the picodollar.
    ///
    /// # Errors
    ///
    /// [`CostError`] when `dollars` is not finite, negative, or above
    /// [`MAX_DOLLARS_PER_UNIT`].
    pub fn per_gib(dollars: f64) -> Result<Price, CostError> {
        Price::from_dollars(dollars, BYTES_PER_GIB, "GiB")
    }

    /// A price in dollars per GB (10^9 bytes), as cloud price lists state it,
    /// rounded to the picodollar.
    ///
    /// # Errors
    ///
    /// As for [`Price::per_gib`].
    pub fn per_gb(dollars: f64) -> Result<Price, CostError> {
        Price::from_dollars(dollars, BYTES_PER_GB, "GB")
    }

    fn from_dollars(dollars: f64, unit_bytes: u64, unit: &'static str) -> Result<Price, CostError> {
        if !dollars.is_finite() || dollars < 0.0 {
            return Err(CostError::InvalidPrice { dollars, unit });
        }
        if dollars > MAX_DOLLARS_PER_UNIT {
            return Err(CostError::TooLarge {
                dollars,
                unit,
                max: MAX_DOLLARS_PER_UNIT,
            });
        }
        // At most 1e15, well inside u64 and exactly representable in f64.
        let picodollars = (dollars * PICODOLLARS_PER_DOLLAR as f64).round() as u64;
        Ok(Price {
            picodollars,
            unit_bytes,
        })
    }

    /// The price in dollars per GiB.
    pub fn dollars_per_gib(&self) -> f64 {
        self.dollars_per(BYTES_PER_GIB)
    }

    /// The price in dollars per GB.
    pub fn dollars_per_gb(&self) -> f64 {
        self.dollars_per(BYTES_PER_GB)
    }

    fn dollars_per(&self, bytes: u64) -> f64 {
        // Exact integer picodollars for the unit, then one division.
        let pico = u128::from(self.picodollars) * u128::from(bytes) / u128::from(self.unit_bytes);
        pico as f64 / PICODOLLARS_PER_DOLLAR as f64
    }

    /// True when nothing is charged.
    pub fn is_free(&self) -> bool {
        self.picodollars == 0
    }

    /// The cost of `bytes`, in whole microdollars, rounded down.
    pub fn microdollars(&self, bytes: u64) -> u64 {
        let num = u128::from(bytes) * u128::from(self.picodollars);
        let den = u128::from(self.unit_bytes) * u128::from(PICODOLLARS_PER_MICRODOLLAR);
        u64::try_from(num / den).unwrap_or(u64::MAX)
    }

    /// The cost of `bytes` in dollars (floating point, for display).
    pub fn dollars(&self, bytes: u64) -> f64 {
        let pico = u128::from(bytes) * u128::from(self.picodollars) / u128::from(self.unit_bytes);
        pico as f64 / PICODOLLARS_PER_DOLLAR as f64
    }
}

impl Default for Price {
    /// [`Price::AWS_INTER_AZ_PER_SIDE`].
    fn default() -> Self {
        Price::AWS_INTER_AZ_PER_SIDE
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}/GiB", self.dollars_per_gib())
    }
}

/// The price of each billing side of a cross-zone byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pricing {
    /// Charged for bytes leaving the sending zone.
    pub sending: Price,
    /// Charged for bytes entering the receiving zone.
    pub receiving: Price,
}

impl Pricing {
    /// AWS inter-AZ pricing: $0.01/GB on each side.
    pub const AWS_INTER_AZ: Pricing = Pricing {
        sending: Price::AWS_INTER_AZ_PER_SIDE,
        receiving: Price::AWS_INTER_AZ_PER_SIDE,
    };

    /// The price of one side.
    pub fn side(&self, side: BillingSide) -> Price {
        match side {
            BillingSide::Sending => self.sending,
            BillingSide::Receiving => self.receiving,
        }
    }

    /// Publishes each side's price as the gauge [`PRICE_GAUGE`]`{side}`, in
    /// dollars per GB (10^9 bytes), so that PromQL can price any byte counter
    /// (cost per namespace or workload) without hard-coding the price.
    pub fn record_gauges(&self) {
        metrics::describe_gauge!(
            PRICE_GAUGE,
            "Configured price of cross-zone transfer in dollars per GB (10^9 bytes), by billing side."
        );
        for side in BillingSide::BOTH {
            metrics::gauge!(PRICE_GAUGE, "side" => side.as_str())
                .set(self.side(side).dollars_per_gb());
        }
    }
}

/// The gauge [`Pricing::record_gauges`] sets: dollars per GB by `side`.
pub const PRICE_GAUGE: &str = "netscope_cross_zone_price_dollars_per_gigabyte";

impl Default for Pricing {
    /// [`Pricing::AWS_INTER_AZ`].
    fn default() -> Self {
        Pricing::AWS_INTER_AZ
    }
}

/// Turns a stream of byte counts into whole microdollars without losing the
/// fractions: the sum of everything [`CostMeter::add`] returned is always
/// `floor(total_bytes * price)` in microdollars. Safe to share between
/// threads.
#[derive(Debug)]
pub struct CostMeter {
    price: Price,
    /// Picodollar-units not yet converted, in `[0, unit_bytes * 1e6)`:
    /// `(bytes * picodollars) mod (unit_bytes * 1e6)` summed over all adds.
    remainder: AtomicU64,
}

impl CostMeter {
    /// A meter at zero.
    pub fn new(price: Price) -> Self {
        CostMeter {
            price,
            remainder: AtomicU64::new(0),
        }
    }

    /// A meter that goes on from the [`remainder`](Self::remainder) of an
    /// earlier one: the two together return exactly what one meter would.
    pub fn with_remainder(price: Price, remainder: u64) -> Self {
        let den = price.unit_bytes * PICODOLLARS_PER_MICRODOLLAR;
        CostMeter {
            price,
            remainder: AtomicU64::new(if den == 0 { 0 } else { remainder % den }),
        }
    }

    /// The fraction of a microdollar not yet returned, in the meter's
    /// internal unit (for [`with_remainder`](Self::with_remainder)).
    pub fn remainder(&self) -> u64 {
        self.remainder.load(Ordering::Relaxed)
    }

    /// The price this meter charges.
    pub fn price(&self) -> Price {
        self.price
    }

    /// Adds `bytes` and returns the whole microdollars they complete.
    pub fn add(&self, bytes: u64) -> u64 {
        if self.price.picodollars == 0 || bytes == 0 {
            return 0;
        }
        // den <= 2^30 * 1e6 < 2^50, so the remainder fits u64.
        let den = self.price.unit_bytes * PICODOLLARS_PER_MICRODOLLAR;
        let mut whole = 0;
        let _ = self
            .remainder
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |rem| {
                let (q, r) = match bytes
                    .checked_mul(self.price.picodollars)
                    .and_then(|n| n.checked_add(rem))
                {
                    // The common case: a u64 division by a constant.
                    Some(num) => (num / den, num % den),
                    None => {
                        let num = u128::from(bytes) * u128::from(self.price.picodollars)
                            + u128::from(rem);
                        let den = u128::from(den);
                        // q < 2^128 / 2^20; saturate rather than wrap in the
                        // impossible case that it does not fit.
                        (
                            u64::try_from(num / den).unwrap_or(u64::MAX),
                            (num % den) as u64,
                        )
                    }
                };
                whole = q;
                Some(r)
            });
        whole
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meter_resumed_from_a_remainder_continues_exactly() {
        let price = Price::per_gb(0.01).unwrap_or_else(|e| panic!("{e}"));
        let one = CostMeter::new(price);
        let total: u64 = [333_333u64, 777_777, 5_000_001]
            .iter()
            .map(|b| one.add(*b))
            .sum();
        let first = CostMeter::new(price);
        let a = first.add(333_333) + first.add(777_777);
        let second = CostMeter::with_remainder(price, first.remainder());
        assert_eq!(a + second.add(5_000_001), total);
        assert_eq!(total, price.microdollars(333_333 + 777_777 + 5_000_001));
    }

    #[test]
    fn price_gauges_carry_each_side_in_dollars_per_gb() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let pricing = Pricing {
            sending: Price::per_gb(0.02).unwrap_or_else(|e| panic!("{e}")),
            receiving: Price::per_gb(0.0).unwrap_or_else(|e| panic!("{e}")),
        };
        metrics::with_local_recorder(&recorder, || pricing.record_gauges());
        let mut got: Vec<(String, f64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                assert_eq!(key.name(), PRICE_GAUGE);
                let side = key
                    .labels()
                    .find(|l| l.key() == "side")
                    .map(|l| l.value().to_string())
                    .unwrap_or_else(|| panic!("no side label on {key:?}"));
                match value {
                    DebugValue::Gauge(v) => (side, v.into_inner()),
                    other => panic!("{PRICE_GAUGE} is not a gauge: {other:?}"),
                }
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                ("receiving".to_string(), 0.0),
                ("sending".to_string(), 0.02)
            ]
        );
    }

    #[test]
    fn aws_default_is_one_cent_per_gb_each_side() {
        let p = Pricing::default();
        assert_eq!(p, Pricing::AWS_INTER_AZ);
        for side in BillingSide::BOTH {
            let price = p.side(side);
            assert_eq!(price, Price::per_gb(0.01).unwrap());
            assert_eq!(price.dollars_per_gb(), 0.01);
            // 0.01 * 2^30 / 1e9, exactly.
            assert_eq!(price.dollars_per_gib(), 0.010_737_418_24);
            // One GB is exactly one cent, i.e. 10_000 microdollars.
            assert_eq!(price.microdollars(BYTES_PER_GB), 10_000);
            assert_eq!(price.microdollars(BYTES_PER_GIB), 10_737);
            assert_eq!(price.dollars(3 * BYTES_PER_GB), 0.03);
        }
    }

    #[test]
    fn per_gib_prices_convert_exactly() {
        let p = Price::per_gib(0.02).unwrap();
        assert_eq!(p.dollars_per_gib(), 0.02);
        assert_eq!(p.microdollars(BYTES_PER_GIB), 20_000);
        assert_eq!(p.microdollars(BYTES_PER_GIB / 2), 10_000);
        // 1e9 bytes at $0.02/GiB = 0.02 * 1e9 / 2^30 dollars = 18626.45... microdollars.
        assert_eq!(p.microdollars(BYTES_PER_GB), 18_626);
    }

    #[test]
    fn rejects_bad_prices() {
        assert!(matches!(
            Price::per_gib(-0.01),
            Err(CostError::InvalidPrice { .. })
        ));
        assert!(matches!(
            Price::per_gb(f64::NAN),
            Err(CostError::InvalidPrice { .. })
        ));
        assert!(matches!(
            Price::per_gb(f64::INFINITY),
            Err(CostError::InvalidPrice { .. })
        ));
        assert!(matches!(
            Price::per_gb(1e6),
            Err(CostError::TooLarge { .. })
        ));
        assert!(Price::per_gib(0.0).unwrap().is_free());
        let msg = Price::per_gib(-1.0).unwrap_err().to_string();
        assert!(msg.contains("-1") && msg.contains("GiB"), "{msg}");
    }

    #[test]
    fn meter_sum_equals_floor_of_total_however_split() {
        for price in [
            Price::AWS_INTER_AZ_PER_SIDE,
            Price::per_gib(0.01).unwrap(),
            Price::per_gib(0.0123456789).unwrap(),
        ] {
            let meter = CostMeter::new(price);
            let mut total_bytes = 0u64;
            let mut total_micro = 0u64;
            // A deterministic spread of small and large flows.
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            for i in 0..20_000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let bytes = if i % 97 == 0 {
                    x % 50_000_000_000
                } else {
                    x % 3_000
                };
                total_bytes += bytes;
                total_micro += meter.add(bytes);
                assert_eq!(
                    total_micro,
                    price.microdollars(total_bytes),
                    "after {i} flows"
                );
            }
        }
    }

    #[test]
    fn meter_handles_huge_counts_without_panicking() {
        let meter = CostMeter::new(Price::per_gb(MAX_DOLLARS_PER_UNIT).unwrap());
        // u64::MAX bytes at $1000/GB: forces the 128-bit path.
        let got = meter.add(u64::MAX);
        assert_eq!(
            got,
            Price::per_gb(MAX_DOLLARS_PER_UNIT)
                .unwrap()
                .microdollars(u64::MAX)
        );
        assert_eq!(CostMeter::new(Price::FREE).add(u64::MAX), 0);
    }
}

// arbiter patch 22: OPA's arithmetic, exactly.
//
// OPA keeps every number as its decimal text and computes with Go's `math/big.Float`: an
// operand is read from its text at 64 bits of mantissa (`big.Float.SetString`), the operation
// is rounded to nearest-even at 64 bits, and the result is written back as the shortest
// decimal text that reads back to the same 64-bit value (`Text('f', -1)` for an integer,
// `Text('g', -1)` otherwise). So `0.1 + 0.2` is `0.3`, `1 / 3.0` is `0.33333333333333333334`,
// `0 * -7.25` is `-0`, and an integer past 2^64 loses its low bits. This module is that
// part of Go's `math/big` (floatconv.go `scan` and `pow5`, float.go `round`, `Add`, `Sub`,
// `Mul`, `Quo`, ftoa.go `roundShortest`, `fmtE`, `fmtF`), on num-bigint.
#![allow(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use alloc::string::String;
use alloc::vec::Vec;

use num_bigint::BigUint;
use num_traits::{One, Zero};

/// The precision `big.Float.SetString` gives a number read from its text.
pub const PREC: u32 = 64;

/// Decimal exponents past this are not emulated (their exact decimal expansions would be
/// large); the caller keeps its own arithmetic for them.
const MAX_DECIMAL_EXPONENT: i64 = 10_000;

/// A finite `big.Float`: `(-1)^neg * mant * 2^exp`, rounded to `prec` bits; `mant == 0` is a
/// (signed) zero.
#[derive(Clone, Debug)]
pub struct GoFloat {
    neg: bool,
    mant: BigUint,
    exp: i64,
    prec: u32,
}

/// A decimal number's text as Go's `big.Float` and `big.Rat` scan it: an optional sign,
/// digits with at most one point, and an optional exponent (`e` or `E`, one optional sign,
/// digits). The value is `digits * 10^(exp10 - fraction)`: `-12.5e3` has digits 125,
/// fraction 1, exp10 3.
pub struct DecimalText {
    pub neg: bool,
    pub digits: BigUint,
    pub fraction: i64,
    pub exp10: i64,
}

/// Reads `text` as a [`DecimalText`]; `None` when it is not one (or its exponent passes i64).
pub fn scan_decimal(text: &str) -> Option<DecimalText> {
    let (neg, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (int_part, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac.is_empty()
        || !int_part
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let exp10 = match exponent {
        None => 0,
        Some(e) => {
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            e.parse::<i64>().ok()?
        }
    };
    let all: Vec<u8> = int_part
        .bytes()
        .chain(frac.bytes())
        .map(|b| b - b'0')
        .collect();
    Some(DecimalText {
        neg,
        digits: BigUint::from_radix_be(&all, 10)?,
        fraction: frac.len() as i64,
        exp10,
    })
}

/// Rounds `mant * 2^exp` to `prec` bits, nearest-even; `sticky` says the exact value has more
/// nonzero bits below `mant`'s lowest (it then lies strictly above `mant * 2^exp`).
fn round(neg: bool, mant: BigUint, exp: i64, prec: u32, sticky: bool) -> GoFloat {
    let bits = mant.bits() as i64;
    if bits == 0 {
        return GoFloat {
            neg,
            mant,
            exp: 0,
            prec,
        };
    }
    let (mant, exp) = if sticky && bits <= i64::from(prec) + 1 {
        // Room for the rounding and sticky bits below the kept ones.
        let shift = i64::from(prec) + 2 - bits;
        (mant << shift as usize, exp - shift)
    } else {
        (mant, exp)
    };
    let bits = mant.bits() as i64;
    let s = bits - i64::from(prec);
    if s <= 0 {
        return GoFloat {
            neg,
            mant,
            exp,
            prec,
        };
    }
    let s_us = s as usize;
    let mut kept = &mant >> s_us;
    let half = BigUint::one() << (s_us - 1);
    let rest = &mant - (&kept << s_us);
    let up = match rest.cmp(&half) {
        core::cmp::Ordering::Greater => true,
        core::cmp::Ordering::Less => false,
        core::cmp::Ordering::Equal => sticky || kept.bit(0),
    };
    let mut exp = exp + s;
    if up {
        kept += 1u32;
        if kept.bits() > u64::from(prec) {
            kept >>= 1;
            exp += 1;
        }
    }
    GoFloat {
        neg,
        mant: kept,
        exp,
        prec,
    }
}

impl GoFloat {
    pub fn is_zero(&self) -> bool {
        self.mant.is_zero()
    }

    pub const fn is_neg(&self) -> bool {
        self.neg
    }

    /// `big.Float.SetString(text)` at 64 bits, for JSON number syntax. `None` for text that is
    /// not a number or whose exponent is out of the emulated range.
    pub fn parse(text: &str) -> Option<GoFloat> {
        let DecimalText {
            neg,
            digits: mant,
            fraction,
            exp10,
        } = scan_decimal(text)?;
        if mant.is_zero() {
            return Some(GoFloat {
                neg,
                mant,
                exp: 0,
                prec: PREC,
            });
        }
        let exp5 = exp10 - fraction;
        if exp5.abs() > MAX_DECIMAL_EXPONENT {
            return None;
        }
        // mant * 10^exp5 = mant * 2^exp5 * 5^exp5; the multiplication (or division) by the
        // power of five rounds once, from the exact mantissa, as Go's scan does.
        let x = GoFloat {
            neg,
            mant,
            exp: exp5,
            prec: PREC,
        };
        if exp5 == 0 {
            return Some(round(neg, x.mant, x.exp, PREC, false));
        }
        let p = pow5(exp5.unsigned_abs(), PREC + 64);
        Some(if exp5 < 0 {
            x.quo(&p, PREC)
        } else {
            x.mul(&p, PREC)
        })
    }

    /// `new(big.Float).SetInt(i)`: exact, at the larger of the integer's bit length and 64.
    pub fn from_int(neg: bool, mag: BigUint) -> GoFloat {
        let prec = (mag.bits() as u32).max(PREC);
        GoFloat {
            neg: neg && !mag.is_zero(),
            mant: mag,
            exp: 0,
            prec,
        }
    }

    fn with_prec(prec: u32, v: u64) -> GoFloat {
        round(false, BigUint::from(v), 0, prec, false)
    }

    /// `z.Mul(x, y)` with `z`'s precision `prec`.
    pub fn mul(&self, y: &GoFloat, prec: u32) -> GoFloat {
        let neg = self.neg != y.neg;
        if self.is_zero() || y.is_zero() {
            return GoFloat {
                neg,
                mant: BigUint::zero(),
                exp: 0,
                prec,
            };
        }
        round(neg, &self.mant * &y.mant, self.exp + y.exp, prec, false)
    }

    /// `z.Quo(x, y)` with `z`'s precision `prec`; `y` is not zero.
    pub fn quo(&self, y: &GoFloat, prec: u32) -> GoFloat {
        let neg = self.neg != y.neg;
        if self.is_zero() || y.is_zero() {
            return GoFloat {
                neg,
                mant: BigUint::zero(),
                exp: 0,
                prec,
            };
        }
        // Enough quotient bits for the rounding bit, the remainder as the sticky bit.
        let shift = (i64::from(prec) + 2 + y.mant.bits() as i64 - self.mant.bits() as i64).max(0);
        let num = &self.mant << shift as usize;
        let q = &num / &y.mant;
        let sticky = !(&num - &q * &y.mant).is_zero();
        round(neg, q, self.exp - y.exp - shift, prec, sticky)
    }

    /// `z.Add(x, y)` with `z`'s precision `prec`.
    pub fn add(&self, y: &GoFloat, prec: u32) -> GoFloat {
        if self.is_zero() && y.is_zero() {
            return GoFloat {
                neg: self.neg && y.neg,
                mant: BigUint::zero(),
                exp: 0,
                prec,
            };
        }
        if y.is_zero() {
            return round(self.neg, self.mant.clone(), self.exp, prec, false);
        }
        if self.is_zero() {
            return round(y.neg, y.mant.clone(), y.exp, prec, false);
        }
        // An operand far below the other's lowest bit and below the rounding position only
        // decides the rounding direction: it stands in as one bit just under both.
        let top = |f: &GoFloat| f.exp + f.mant.bits() as i64;
        let stand_in = |big: &GoFloat, small: &GoFloat| -> Option<GoFloat> {
            let floor = big.exp.min(top(big) - i64::from(prec) - 4);
            (top(small) < floor).then(|| GoFloat {
                neg: small.neg,
                mant: BigUint::one(),
                exp: floor - 1,
                prec: small.prec,
            })
        };
        let (a, b) = if let Some(s) = stand_in(self, y) {
            (self.clone(), s)
        } else if let Some(s) = stand_in(y, self) {
            (s, y.clone())
        } else {
            (self.clone(), y.clone())
        };
        let e = a.exp.min(b.exp);
        let ma = a.mant << (a.exp - e) as usize;
        let mb = b.mant << (b.exp - e) as usize;
        if a.neg == b.neg {
            return round(a.neg, ma + mb, e, prec, false);
        }
        match ma.cmp(&mb) {
            // x + (-x) is +0 when rounding to nearest.
            core::cmp::Ordering::Equal => GoFloat {
                neg: false,
                mant: BigUint::zero(),
                exp: 0,
                prec,
            },
            core::cmp::Ordering::Greater => round(a.neg, ma - mb, e, prec, false),
            core::cmp::Ordering::Less => round(b.neg, mb - ma, e, prec, false),
        }
    }

    pub fn neg(&self) -> GoFloat {
        GoFloat {
            neg: !self.neg,
            ..self.clone()
        }
    }

    pub fn abs(&self) -> GoFloat {
        GoFloat {
            neg: false,
            ..self.clone()
        }
    }

    /// `z.Sub(x, y)` with `z`'s precision `prec`.
    pub fn sub(&self, y: &GoFloat, prec: u32) -> GoFloat {
        self.add(&y.neg(), prec)
    }

    pub const fn prec(&self) -> u32 {
        self.prec
    }

    /// `x.Int(nil)`: the integer part, truncated toward zero, as sign and magnitude; and
    /// whether that was exact.
    pub fn int(&self) -> (bool, BigUint, bool) {
        if self.is_zero() {
            return (false, BigUint::zero(), true);
        }
        if self.exp >= 0 {
            return (self.neg, &self.mant << self.exp as usize, true);
        }
        let s = (-self.exp) as u64;
        if s >= self.mant.bits() {
            return (false, BigUint::zero(), false);
        }
        let i = &self.mant >> s as usize;
        let exact = (&i << s as usize) == self.mant;
        (self.neg && !i.is_zero(), i, exact)
    }

    /// `new(big.Float).SetInt(x.Int(nil))`: the integer part, toward zero, and whether it was
    /// the whole number.
    pub fn trunc(&self) -> (GoFloat, bool) {
        let (neg, mag, exact) = self.int();
        (GoFloat::from_int(neg, mag), exact)
    }

    /// `x.IsInt()`.
    pub fn is_int(&self) -> bool {
        self.int().2
    }

    /// OPA's `FloatToNumber`: `Text('f', -1)` for an integer, `Text('g', -1)` otherwise.
    pub fn opa_text(&self) -> String {
        let mut out = String::new();
        if self.neg {
            out.push('-');
        }
        let mut d = Decimal::new(&self.mant, self.exp);
        round_shortest(&mut d, self);
        if self.is_int() {
            let prec = (d.mant.len() as i64 - d.exp).max(0);
            fmt_f(&mut out, &d, prec);
        } else {
            fmt_g(&mut out, &d, d.mant.len() as i64, true, 'e');
        }
        out
    }
}

/// `p.pow5(n)` for a `p` of precision `prec` (floatconv.go).
fn pow5(n: u64, prec: u32) -> GoFloat {
    const POW5_27: u64 = 7_450_580_596_923_828_125;
    if n <= 27 {
        return GoFloat::with_prec(prec, 5u64.pow(n as u32));
    }
    let mut z = GoFloat::with_prec(prec, POW5_27);
    let mut n = n - 27;
    let fprec = prec + 64;
    let mut f = GoFloat::with_prec(fprec, 5);
    while n > 0 {
        if n & 1 != 0 {
            z = z.mul(&f, prec);
        }
        f = f.mul(&f, fprec);
        n >>= 1;
    }
    z
}

/// A decimal: `0.mant * 10^exp`, digits without trailing zeros (math/big's `decimal`,
/// strconv's `decimalSlice`).
pub struct Decimal {
    mant: Vec<u8>,
    exp: i64,
}

impl Decimal {
    /// ASCII `digits` with the decimal point after `point` of them; trailing zeros dropped.
    pub fn from_digits(digits: Vec<u8>, point: i64) -> Decimal {
        let mut d = Decimal {
            mant: digits,
            exp: point,
        };
        d.trim();
        d
    }

    /// The exact decimal of `m * 2^shift`.
    fn new(m: &BigUint, shift: i64) -> Decimal {
        if m.is_zero() {
            return Decimal {
                mant: Vec::new(),
                exp: 0,
            };
        }
        let (digits, point) = if shift >= 0 {
            let v = m << shift as usize;
            let s = v.to_str_radix(10).into_bytes();
            let n = s.len() as i64;
            (s, n)
        } else {
            // m / 2^k = m * 5^k / 10^k.
            let k = (-shift) as u32;
            let v = m * BigUint::from(5u32).pow(k);
            let s = v.to_str_radix(10).into_bytes();
            let n = s.len() as i64;
            (s, n - i64::from(k))
        };
        Decimal::from_digits(digits, point)
    }

    /// How many digits.
    pub fn len(&self) -> usize {
        self.mant.len()
    }

    /// Where the decimal point goes: after this many digits.
    pub const fn point(&self) -> i64 {
        self.exp
    }

    fn trim(&mut self) {
        while self.mant.last() == Some(&b'0') {
            self.mant.pop();
        }
        if self.mant.is_empty() {
            self.exp = 0;
        }
    }

    fn at(&self, i: i64) -> u8 {
        if 0 <= i && (i as usize) < self.mant.len() {
            self.mant[i as usize]
        } else {
            b'0'
        }
    }

    fn should_round_up(&self, n: usize) -> bool {
        if self.mant[n] == b'5' && n + 1 == self.mant.len() {
            return n > 0 && (self.mant[n - 1] - b'0') & 1 != 0;
        }
        self.mant[n] >= b'5'
    }

    fn round(&mut self, n: usize) {
        if n >= self.mant.len() {
            return;
        }
        if self.should_round_up(n) {
            self.round_up(n);
        } else {
            self.round_down(n);
        }
    }

    fn round_up(&mut self, n: usize) {
        if n >= self.mant.len() {
            return;
        }
        let mut n = n;
        while n > 0 && self.mant[n - 1] >= b'9' {
            n -= 1;
        }
        if n == 0 {
            self.mant.clear();
            self.mant.push(b'1');
            self.exp += 1;
            return;
        }
        self.mant.truncate(n);
        self.mant[n - 1] += 1;
    }

    fn round_down(&mut self, n: usize) {
        if n >= self.mant.len() {
            return;
        }
        self.mant.truncate(n);
        self.trim();
    }
}

/// ftoa.go `roundShortest`: the fewest digits that read back as `x` at its precision.
fn round_shortest(d: &mut Decimal, x: &GoFloat) {
    if d.mant.is_empty() {
        return;
    }
    let bits = x.mant.bits() as i64;
    let mut exp = x.exp;
    let s = bits - (i64::from(x.prec) + 1);
    let mant = if s < 0 {
        &x.mant << (-s) as usize
    } else {
        &x.mant >> s as usize
    };
    exp += s;
    let lower = Decimal::new(&(&mant - 1u32), exp);
    let upper = Decimal::new(&(&mant + 1u32), exp);
    let inclusive = !mant.bit(1);
    let digits = d.mant.clone();
    for (i, &m) in digits.iter().enumerate() {
        let l = lower.at(i as i64);
        let u = upper.at(i as i64);
        let okdown = l != m || inclusive && i + 1 == lower.mant.len();
        let okup = m != u && (inclusive || m + 1 < u || i + 1 < upper.mant.len());
        match (okdown, okup) {
            (true, true) => {
                d.round(i + 1);
                return;
            }
            (true, false) => {
                d.round_down(i + 1);
                return;
            }
            (false, true) => {
                d.round_up(i + 1);
                return;
            }
            (false, false) => {}
        }
    }
}

/// `%e` (strconv's and math/big's `fmtE`): `d.ddde±dd`, `prec` digits after the point, `e` the
/// exponent letter.
pub fn fmt_e(out: &mut String, d: &Decimal, prec: i64, e: char) {
    out.push(d.mant.first().map_or('0', |&c| c as char));
    if prec > 0 {
        out.push('.');
        let m = d.mant.len().min(prec as usize + 1);
        if m > 1 {
            out.extend(d.mant[1..m].iter().map(|&c| c as char));
        }
        for _ in m.max(1)..=prec as usize {
            out.push('0');
        }
    }
    out.push(e);
    let mut exp = if d.mant.is_empty() { 0 } else { d.exp - 1 };
    if exp < 0 {
        out.push('-');
        exp = -exp;
    } else {
        out.push('+');
    }
    if exp < 10 {
        out.push('0');
    }
    out.push_str(&alloc::format!("{exp}"));
}

/// `%f` (`fmtF`): the integer digits, then `prec` digits after the point.
pub fn fmt_f(out: &mut String, d: &Decimal, prec: i64) {
    if d.exp > 0 {
        let m = d.mant.len().min(d.exp as usize);
        out.extend(d.mant[..m].iter().map(|&c| c as char));
        for _ in m as i64..d.exp {
            out.push('0');
        }
    } else {
        out.push('0');
    }
    if prec > 0 {
        out.push('.');
        for i in 0..prec {
            out.push(d.at(d.exp + i) as char);
        }
    }
}

/// `%g` (strconv's `formatDigits` and math/big's `Append` for `'g'`): `%e` when the exponent is
/// below -4 or at least the precision (6 for the shortest digits), `%f` otherwise, without
/// trailing zeros; `e` is the exponent letter of the `%e` form.
pub fn fmt_g(out: &mut String, d: &Decimal, prec: i64, shortest: bool, e: char) {
    let nd = d.mant.len() as i64;
    let mut eprec = prec;
    if eprec > nd && nd >= d.exp {
        eprec = nd;
    }
    if shortest {
        eprec = 6;
    }
    let exp = d.exp - 1;
    if exp < -4 || exp >= eprec {
        fmt_e(out, d, prec.min(nd) - 1, e);
    } else {
        let p = if prec > d.exp { nd } else { prec };
        fmt_f(out, d, (p - d.exp).max(0));
    }
}

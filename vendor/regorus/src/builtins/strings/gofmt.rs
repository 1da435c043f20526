// arbiter patch 23: OPA's `sprintf` is Go's `fmt.Sprintf` over the operands OPA makes of the
// array's elements: an integer text that fits 64 bits is a Go `int`, a longer one a
// `*big.Int`, any other number a `float64` (its text when float64 cannot hold it), a string a
// `string`, and anything else its Rego text as a `string`. This is that part of Go's fmt
// (print.go `doPrintf`, `printArg`, `badVerb`; format.go; strconv's float formats and quoting;
// math/big's `Int.Format`), so verbs, flags, widths, precisions, argument indexes and every
// `%!` complaint (`%!d(string=a)`, `%!f(int=01)`, `%!(EXTRA int=2)`, `%!d(MISSING)`) come out
// as OPA writes them.
#![allow(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use num_bigint::BigInt;
use num_traits::Signed;

use super::go_is_print::is_print;
use crate::gofloat::{fmt_e, fmt_f, fmt_g, Decimal};

/// An operand as OPA hands it to Go's fmt.
#[derive(Debug, Clone)]
pub enum Arg {
    Int(i64),
    Big(BigInt),
    Float(f64),
    Str(String),
}

impl Arg {
    /// The operand OPA makes of a number's text (`topdown/strings.go` `builtinSprintf`).
    pub fn from_number_text(text: &str) -> Arg {
        if let Ok(i) = text.parse::<i64>() {
            return Arg::Int(i);
        }
        if let Ok(b) = text.parse::<BigInt>() {
            return Arg::Big(b);
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Arg::Float(f),
            _ => Arg::Str(text.to_string()),
        }
    }

    const fn type_name(&self) -> &'static str {
        match self {
            Arg::Int(_) => "int",
            Arg::Big(_) => "*big.Int",
            Arg::Float(_) => "float64",
            Arg::Str(_) => "string",
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Flags {
    sharp: bool,
    zero: bool,
    plus: bool,
    minus: bool,
    space: bool,
    sharp_v: bool,
    plus_v: bool,
    wid: usize,
    wid_present: bool,
    prec: usize,
    prec_present: bool,
}

struct Printer {
    buf: String,
    f: Flags,
}

const LDIGITS: &[u8; 17] = b"0123456789abcdefx";
const UDIGITS: &[u8; 17] = b"0123456789ABCDEFX";

/// The longest text `sprintf` writes. Go has no such bound; a width is at most 10^6 per verb,
/// so a format with many wide verbs could otherwise ask for gigabytes.
pub const MAX_OUTPUT: usize = 64 << 20;

/// `fmt.Sprintf(format, args...)`; an error past [`MAX_OUTPUT`] or the engine's memory limit.
pub fn sprintf(format: &str, args: &[Arg]) -> anyhow::Result<String> {
    let mut p = Printer {
        buf: String::new(),
        f: Flags::default(),
    };
    let fmt = format.as_bytes();
    let end = fmt.len();
    let mut arg_num = 0usize;
    let mut reordered = false;
    let mut i = 0usize;
    while i < end {
        let mut good_arg_num = true;
        let lasti = i;
        while i < end && fmt[i] != b'%' {
            i += 1;
        }
        if i > lasti {
            p.buf.push_str(&format[lasti..i]);
        }
        if i >= end {
            break;
        }
        i += 1;
        p.f = Flags::default();
        while i < end {
            match fmt[i] {
                b'#' => p.f.sharp = true,
                b'0' => p.f.zero = true,
                b'+' => p.f.plus = true,
                b'-' => p.f.minus = true,
                b' ' => p.f.space = true,
                _ => break,
            }
            i += 1;
        }
        let mut after_index;
        (arg_num, i, after_index) = arg_number(
            arg_num,
            fmt,
            i,
            args.len(),
            &mut reordered,
            &mut good_arg_num,
        );
        if i < end && fmt[i] == b'*' {
            i += 1;
            let (w, ok, n) = int_from_arg(args, arg_num);
            arg_num = n;
            p.f.wid_present = ok;
            if !ok {
                p.buf.push_str("%!(BADWIDTH)");
            }
            if w < 0 {
                p.f.minus = true;
                p.f.zero = false;
            }
            p.f.wid = w.unsigned_abs() as usize;
            after_index = false;
        } else {
            let (w, ok, ni) = parsenum(fmt, i, end);
            p.f.wid = w;
            p.f.wid_present = ok;
            i = ni;
            if after_index && ok {
                good_arg_num = false;
            }
        }
        if i + 1 < end && fmt[i] == b'.' {
            i += 1;
            if after_index {
                good_arg_num = false;
            }
            (arg_num, i, after_index) = arg_number(
                arg_num,
                fmt,
                i,
                args.len(),
                &mut reordered,
                &mut good_arg_num,
            );
            if i < end && fmt[i] == b'*' {
                i += 1;
                let (pr, ok, n) = int_from_arg(args, arg_num);
                arg_num = n;
                p.f.prec_present = ok && pr >= 0;
                p.f.prec = if pr < 0 { 0 } else { pr as usize };
                if !p.f.prec_present {
                    p.buf.push_str("%!(BADPREC)");
                }
                after_index = false;
            } else {
                let (pr, _, ni) = parsenum(fmt, i, end);
                p.f.prec = pr;
                p.f.prec_present = true;
                i = ni;
            }
        }
        if !after_index {
            (arg_num, i, _) = arg_number(
                arg_num,
                fmt,
                i,
                args.len(),
                &mut reordered,
                &mut good_arg_num,
            );
        }
        if i >= end {
            p.buf.push_str("%!(NOVERB)");
            break;
        }
        let verb = format[i..].chars().next().unwrap_or('?');
        i += verb.len_utf8();
        if verb == '%' {
            p.buf.push('%');
        } else if !good_arg_num {
            p.buf.push_str("%!");
            p.buf.push(verb);
            p.buf.push_str("(BADINDEX)");
        } else if arg_num >= args.len() {
            p.buf.push_str("%!");
            p.buf.push(verb);
            p.buf.push_str("(MISSING)");
        } else {
            if verb == 'v' || verb == 'w' {
                p.f.sharp_v = p.f.sharp;
                p.f.sharp = false;
                p.f.plus_v = p.f.plus;
                p.f.plus = false;
            }
            p.print_arg(&args[arg_num], verb);
            arg_num += 1;
        }
        if p.buf.len() > MAX_OUTPUT {
            anyhow::bail!("sprintf: the text would be longer than {MAX_OUTPUT} bytes");
        }
        crate::builtins::utils::enforce_limit()?;
    }
    if !reordered && arg_num < args.len() {
        p.f = Flags::default();
        p.buf.push_str("%!(EXTRA ");
        for (k, a) in args[arg_num..].iter().enumerate() {
            if k > 0 {
                p.buf.push_str(", ");
            }
            p.buf.push_str(a.type_name());
            p.buf.push('=');
            p.print_arg(a, 'v');
        }
        p.buf.push(')');
    }
    Ok(p.buf)
}

fn too_large(n: i64) -> bool {
    !(-1_000_000..=1_000_000).contains(&n)
}

/// `parsenum`: digits from `start`; (number, found, next index).
fn parsenum(s: &[u8], start: usize, end: usize) -> (usize, bool, usize) {
    if start >= end {
        return (0, false, end);
    }
    let mut num: i64 = 0;
    let mut isnum = false;
    let mut i = start;
    while i < end && s[i].is_ascii_digit() {
        if too_large(num) {
            return (0, false, end);
        }
        num = num * 10 + i64::from(s[i] - b'0');
        isnum = true;
        i += 1;
    }
    (num as usize, isnum, i)
}

fn int_from_arg(args: &[Arg], arg_num: usize) -> (i64, bool, usize) {
    if arg_num >= args.len() {
        return (0, false, arg_num);
    }
    match &args[arg_num] {
        Arg::Int(n) if !too_large(*n) => (*n, true, arg_num + 1),
        _ => (0, false, arg_num + 1),
    }
}

/// `argNumber`: an `[n]` index at `i`.
fn arg_number(
    arg_num: usize,
    s: &[u8],
    i: usize,
    num_args: usize,
    reordered: &mut bool,
    good: &mut bool,
) -> (usize, usize, bool) {
    if s.len() <= i || s[i] != b'[' {
        return (arg_num, i, false);
    }
    *reordered = true;
    let rest = &s[i..];
    let (index, wid, ok) = parse_arg_number(rest);
    if ok && index >= 0 && (index as usize) < num_args {
        return (index as usize, i + wid, true);
    }
    *good = false;
    (arg_num, i + wid, ok)
}

fn parse_arg_number(s: &[u8]) -> (i64, usize, bool) {
    if s.len() < 3 {
        return (0, 1, false);
    }
    for i in 1..s.len() {
        if s[i] == b']' {
            let (width, ok, newi) = parsenum(s, 1, i);
            if !ok || newi != i {
                return (0, i + 1, false);
            }
            return (width as i64 - 1, i + 1, true);
        }
    }
    (0, 1, false)
}

impl Printer {
    fn print_arg(&mut self, arg: &Arg, verb: char) {
        if verb == 'T' {
            self.fmt_s(arg.type_name());
            return;
        }
        if verb == 'p' {
            // Not a pointer (a *big.Int's address is no value OPA could return twice).
            self.bad_verb(arg, verb);
            return;
        }
        match arg {
            Arg::Float(v) => self.print_float(arg, *v, verb),
            Arg::Int(v) => self.print_int(arg, *v, verb),
            Arg::Str(s) => self.print_string(arg, s, verb),
            Arg::Big(b) => self.big_format(b, verb),
        }
    }

    fn bad_verb(&mut self, arg: &Arg, verb: char) {
        self.buf.push_str("%!");
        self.buf.push(verb);
        self.buf.push('(');
        self.buf.push_str(arg.type_name());
        self.buf.push('=');
        self.print_arg(arg, 'v');
        self.buf.push(')');
    }

    fn write_padding(&mut self, n: usize) {
        let c = if self.f.zero && !self.f.minus {
            '0'
        } else {
            ' '
        };
        for _ in 0..n {
            self.buf.push(c);
        }
    }

    fn pad(&mut self, s: &str) {
        if !self.f.wid_present || self.f.wid == 0 {
            self.buf.push_str(s);
            return;
        }
        let width = self.f.wid.saturating_sub(s.chars().count());
        if self.f.minus {
            self.buf.push_str(s);
            self.write_padding(width);
        } else {
            self.write_padding(width);
            self.buf.push_str(s);
        }
    }

    fn pad_no_zero(&mut self, s: &str) {
        let old = self.f.zero;
        self.f.zero = false;
        self.pad(s);
        self.f.zero = old;
    }

    fn truncate<'a>(&self, s: &'a str) -> &'a str {
        if self.f.prec_present {
            if let Some((i, _)) = s.char_indices().nth(self.f.prec) {
                return &s[..i];
            }
        }
        s
    }

    fn fmt_s(&mut self, s: &str) {
        let s = self.truncate(s);
        self.pad(s);
    }

    fn print_string(&mut self, arg: &Arg, s: &str, verb: char) {
        match verb {
            'v' if self.f.sharp_v => self.fmt_q(s),
            'v' | 's' => self.fmt_s(s),
            'x' => self.fmt_sx(s, LDIGITS),
            'X' => self.fmt_sx(s, UDIGITS),
            'q' => self.fmt_q(s),
            _ => self.bad_verb(arg, verb),
        }
    }

    fn fmt_sx(&mut self, s: &str, digits: &[u8; 17]) {
        let b = s.as_bytes();
        let mut length = b.len();
        if self.f.prec_present && self.f.prec < length {
            length = self.f.prec;
        }
        let mut width = 2 * length;
        if width > 0 {
            if self.f.space {
                if self.f.sharp {
                    width *= 2;
                }
                width += length - 1;
            } else if self.f.sharp {
                width += 2;
            }
        } else {
            if self.f.wid_present {
                self.write_padding(self.f.wid);
            }
            return;
        }
        if self.f.wid_present && self.f.wid > width && !self.f.minus {
            self.write_padding(self.f.wid - width);
        }
        if self.f.sharp {
            self.buf.push('0');
            self.buf.push(digits[16] as char);
        }
        for (i, &c) in b.iter().take(length).enumerate() {
            if self.f.space && i > 0 {
                self.buf.push(' ');
                if self.f.sharp {
                    self.buf.push('0');
                    self.buf.push(digits[16] as char);
                }
            }
            self.buf.push(digits[usize::from(c >> 4)] as char);
            self.buf.push(digits[usize::from(c & 0xF)] as char);
        }
        if self.f.wid_present && self.f.wid > width && self.f.minus {
            self.write_padding(self.f.wid - width);
        }
    }

    fn fmt_q(&mut self, s: &str) {
        let s = self.truncate(s);
        if self.f.sharp && can_backquote(s) {
            let q = alloc::format!("`{s}`");
            self.pad(&q);
            return;
        }
        let q = quote_with(s, '"', self.f.plus);
        self.pad(&q);
    }

    fn print_int(&mut self, arg: &Arg, v: i64, verb: char) {
        let u = v as u64;
        match verb {
            'v' | 'd' => self.fmt_integer(u, 10, true, verb, LDIGITS),
            'b' => self.fmt_integer(u, 2, true, verb, LDIGITS),
            'o' | 'O' => self.fmt_integer(u, 8, true, verb, LDIGITS),
            'x' => self.fmt_integer(u, 16, true, verb, LDIGITS),
            'X' => self.fmt_integer(u, 16, true, verb, UDIGITS),
            'c' => {
                let r = rune(u);
                self.pad(&r.to_string());
            }
            'q' => {
                let q = quote_with(&rune(u).to_string(), '\'', self.f.plus);
                self.pad(&q);
            }
            'U' => self.fmt_unicode(u),
            _ => self.bad_verb(arg, verb),
        }
    }

    /// format.go `fmtInteger`.
    fn fmt_integer(&mut self, u: u64, base: u64, is_signed: bool, verb: char, digits: &[u8; 17]) {
        let negative = is_signed && (u as i64) < 0;
        let mut u = if negative {
            (u as i64).unsigned_abs()
        } else {
            u
        };
        let mut prec = 0usize;
        if self.f.prec_present {
            prec = self.f.prec;
            if prec == 0 && u == 0 {
                let old = self.f.zero;
                self.f.zero = false;
                self.write_padding(self.f.wid);
                self.f.zero = old;
                return;
            }
        } else if self.f.zero && !self.f.minus && self.f.wid_present {
            prec = self.f.wid;
            if negative || self.f.plus || self.f.space {
                prec = prec.saturating_sub(1);
            }
        }
        let mut out: Vec<u8> = Vec::new();
        while u >= base {
            out.push(digits[(u % base) as usize]);
            u /= base;
        }
        out.push(digits[u as usize]);
        while out.len() < prec {
            out.push(b'0');
        }
        if self.f.sharp {
            match base {
                2 => out.extend_from_slice(b"b0"),
                8 if out.last() != Some(&b'0') => out.push(b'0'),
                16 => {
                    out.push(digits[16]);
                    out.push(b'0');
                }
                _ => {}
            }
        }
        if verb == 'O' {
            out.extend_from_slice(b"o0");
        }
        if negative {
            out.push(b'-');
        } else if self.f.plus {
            out.push(b'+');
        } else if self.f.space {
            out.push(b' ');
        }
        out.reverse();
        let s = String::from_utf8(out).unwrap_or_default();
        self.pad_no_zero(&s);
    }

    /// format.go `fmtUnicode`.
    fn fmt_unicode(&mut self, u: u64) {
        let mut prec: i64 = 4;
        if self.f.prec_present && self.f.prec > 4 {
            prec = self.f.prec as i64;
        }
        let mut hex: Vec<u8> = Vec::new();
        let mut v = u;
        while v >= 16 {
            hex.push(UDIGITS[(v & 0xF) as usize]);
            prec -= 1;
            v >>= 4;
        }
        hex.push(UDIGITS[v as usize]);
        prec -= 1;
        while prec > 0 {
            hex.push(b'0');
            prec -= 1;
        }
        hex.extend_from_slice(b"+U");
        hex.reverse();
        let mut s = String::from_utf8(hex).unwrap_or_default();
        if self.f.sharp && u <= 0x10_FFFF {
            if let Some(c) = char::from_u32(u as u32).filter(|&c| is_print(c)) {
                s.push_str(" '");
                s.push(c);
                s.push('\'');
            }
        }
        self.pad_no_zero(&s);
    }

    /// math/big `Int.Format`.
    fn big_format(&mut self, x: &BigInt, ch: char) {
        let base = match ch {
            'b' => 2,
            'o' | 'O' => 8,
            'd' | 's' | 'v' => 10,
            'x' | 'X' => 16,
            _ => {
                self.buf.push_str("%!");
                self.buf.push(ch);
                self.buf.push_str("(big.Int=");
                self.buf.push_str(&x.to_string());
                self.buf.push(')');
                return;
            }
        };
        let sharp = self.f.sharp || self.f.sharp_v;
        let plus = self.f.plus || self.f.plus_v;
        let sign = if x.is_negative() {
            "-"
        } else if plus {
            "+"
        } else if self.f.space {
            " "
        } else {
            ""
        };
        let mut prefix = if sharp {
            match ch {
                'b' => "0b",
                'o' => "0",
                'x' => "0x",
                'X' => "0X",
                _ => "",
            }
        } else {
            ""
        };
        if ch == 'O' {
            prefix = "0o";
        }
        let mut digits = x.abs().to_str_radix(base);
        if ch == 'X' {
            digits = digits.to_uppercase();
        }
        let (mut left, mut zeros, mut right) = (0usize, 0usize, 0usize);
        if self.f.prec_present {
            if digits.len() < self.f.prec {
                zeros = self.f.prec - digits.len();
            } else if digits == "0" && self.f.prec == 0 {
                return;
            }
        }
        let length = sign.len() + prefix.len() + zeros + digits.len();
        if self.f.wid_present && length < self.f.wid {
            let d = self.f.wid - length;
            if self.f.minus {
                right = d;
            } else if self.f.zero && !self.f.prec_present {
                zeros = d;
            } else {
                left = d;
            }
        }
        for _ in 0..left {
            self.buf.push(' ');
        }
        self.buf.push_str(sign);
        self.buf.push_str(prefix);
        for _ in 0..zeros {
            self.buf.push('0');
        }
        self.buf.push_str(&digits);
        for _ in 0..right {
            self.buf.push(' ');
        }
    }

    fn print_float(&mut self, arg: &Arg, v: f64, verb: char) {
        match verb {
            'v' => self.fmt_float(v, 'g', -1),
            'b' | 'g' | 'G' | 'x' | 'X' => self.fmt_float(v, verb, -1),
            'f' | 'e' | 'E' => self.fmt_float(v, verb, 6),
            'F' => self.fmt_float(v, 'f', 6),
            _ => self.bad_verb(arg, verb),
        }
    }

    /// format.go `fmtFloat`.
    fn fmt_float(&mut self, v: f64, verb: char, prec: i64) {
        let prec = if self.f.prec_present {
            self.f.prec as i64
        } else {
            prec
        };
        let formatted = format_float(v, verb, prec);
        let mut num: Vec<u8> = Vec::with_capacity(formatted.len() + 1);
        if formatted.starts_with('-') || formatted.starts_with('+') {
            num.extend_from_slice(formatted.as_bytes());
        } else {
            num.push(b'+');
            num.extend_from_slice(formatted.as_bytes());
        }
        if self.f.space && num[0] == b'+' && !self.f.plus {
            num[0] = b' ';
        }
        if num.get(1) == Some(&b'I') || num.get(1) == Some(&b'N') {
            if num[1] == b'N' && !self.f.space && !self.f.plus {
                num.remove(0);
            }
            let s = String::from_utf8(num).unwrap_or_default();
            self.pad_no_zero(&s);
            return;
        }
        if self.f.sharp && verb != 'b' {
            let mut digits: i64 = match verb {
                'v' | 'g' | 'G' | 'x' => {
                    if prec == -1 {
                        6
                    } else {
                        prec
                    }
                }
                _ => 0,
            };
            let mut tail: Vec<u8> = Vec::new();
            let mut has_point = false;
            let mut saw_nonzero = false;
            let mut k = 1;
            while k < num.len() {
                match num[k] {
                    b'.' => has_point = true,
                    b'p' | b'P' => {
                        tail.extend_from_slice(&num[k..]);
                        num.truncate(k);
                        break;
                    }
                    b'e' | b'E' if verb != 'x' && verb != 'X' => {
                        tail.extend_from_slice(&num[k..]);
                        num.truncate(k);
                        break;
                    }
                    c => {
                        if c != b'0' {
                            saw_nonzero = true;
                        }
                        if saw_nonzero {
                            digits -= 1;
                        }
                    }
                }
                k += 1;
            }
            if !has_point {
                if num.len() == 2 && num[1] == b'0' {
                    digits -= 1;
                }
                num.push(b'.');
            }
            while digits > 0 {
                num.push(b'0');
                digits -= 1;
            }
            num.extend_from_slice(&tail);
        }
        let s = String::from_utf8(num).unwrap_or_default();
        if self.f.plus || !s.starts_with('+') {
            if self.f.zero && !self.f.minus && self.f.wid_present && self.f.wid > s.len() {
                self.buf.push_str(&s[..1]);
                self.write_padding(self.f.wid - s.len());
                self.buf.push_str(&s[1..]);
                return;
            }
            self.pad(&s);
            return;
        }
        self.pad(&s[1..]);
    }
}

/// `rune(u)` as `utf8.AppendRune` writes it: out of range is U+FFFD.
fn rune(u: u64) -> char {
    u32::try_from(u)
        .ok()
        .and_then(char::from_u32)
        .unwrap_or('\u{FFFD}')
}

/// strconv `CanBackquote`.
fn can_backquote(s: &str) -> bool {
    s.chars()
        .all(|c| c != '`' && c != '\u{FEFF}' && (c == '\t' || !(c < ' ' || c == '\u{7f}')))
}

/// strconv `Quote` / `QuoteRune` (`quote` is `"` or `'`), `QuoteToASCII` when `ascii`.
fn quote_with(s: &str, quote: char, ascii: bool) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        if c == quote || c == '\\' {
            out.push('\\');
            out.push(c);
            continue;
        }
        if if ascii {
            c.is_ascii() && is_print(c)
        } else {
            is_print(c)
        } {
            out.push(c);
            continue;
        }
        match c {
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if c < ' ' || c == '\u{7f}' => {
                out.push_str(&alloc::format!("\\x{:02x}", c as u32));
            }
            c if (c as u32) < 0x10000 => out.push_str(&alloc::format!("\\u{:04x}", c as u32)),
            c => out.push_str(&alloc::format!("\\U{:08x}", c as u32)),
        }
    }
    out.push(quote);
    out
}

/// The decimal of Rust's `{:e}` text (`1.2345e-7`): the same shortest or correctly rounded
/// digits strconv computes.
fn digits_of(e_text: &str) -> Decimal {
    let (mant, exp) = e_text.split_once('e').unwrap_or((e_text, "0"));
    let d: Vec<u8> = mant.bytes().filter(u8::is_ascii_digit).collect();
    Decimal::from_digits(d, exp.parse::<i64>().unwrap_or(0) + 1)
}

/// strconv `FormatFloat(v, fmt, prec, 64)`.
fn format_float(v: f64, fmt: char, prec: i64) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    let neg = v.is_sign_negative();
    let a = v.abs();
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    match fmt {
        'b' => {
            let bits = v.to_bits();
            let mut exp = ((bits >> 52) & 0x7ff) as i64;
            let mut mant = bits & ((1u64 << 52) - 1);
            if exp == 0 {
                exp += 1;
            } else {
                mant |= 1u64 << 52;
            }
            exp += -1023 - 52;
            out.push_str(&alloc::format!(
                "{mant}p{}{}",
                if exp >= 0 { "+" } else { "-" },
                exp.abs()
            ));
            return out;
        }
        'x' | 'X' => {
            fmt_x(&mut out, v, prec, fmt);
            return out;
        }
        'f' if prec >= 0 => {
            out.push_str(&alloc::format!("{:.*}", prec as usize, a));
            return out;
        }
        _ => {}
    }
    let shortest = prec < 0;
    let zero = || Decimal::from_digits(Vec::new(), 0);
    let (digs, prec) = if shortest {
        let d = if a == 0.0 {
            zero()
        } else {
            digits_of(&alloc::format!("{a:e}"))
        };
        let nd = d.len() as i64;
        let p = match fmt {
            'e' | 'E' => (nd - 1).max(0),
            'f' => (nd - d.point()).max(0),
            _ => nd,
        };
        (d, p)
    } else {
        let digits = match fmt {
            'e' | 'E' => prec + 1,
            _ => prec.max(1),
        };
        let p = if matches!(fmt, 'g' | 'G') {
            prec.max(1)
        } else {
            prec
        };
        let d = if a == 0.0 {
            zero()
        } else {
            digits_of(&alloc::format!("{:.*e}", (digits - 1) as usize, a))
        };
        (d, p)
    };
    match fmt {
        'e' | 'E' => fmt_e(&mut out, &digs, prec, fmt),
        'f' => fmt_f(&mut out, &digs, prec),
        'G' => fmt_g(&mut out, &digs, prec, shortest, 'E'),
        _ => fmt_g(&mut out, &digs, prec, shortest, 'e'),
    }
    out
}

/// strconv `fmtX`: `-0x1.yyyp±dd`.
fn fmt_x(out: &mut String, v: f64, prec: i64, fmt: char) {
    let bits = v.to_bits();
    let mut exp = ((bits >> 52) & 0x7ff) as i64;
    let mut mant = bits & ((1u64 << 52) - 1);
    if exp == 0 {
        exp += 1;
    } else {
        mant |= 1u64 << 52;
    }
    exp -= 1023;
    if mant == 0 {
        exp = 0;
    }
    mant <<= 60 - 52;
    while mant != 0 && mant & (1u64 << 60) == 0 {
        mant <<= 1;
        exp -= 1;
    }
    if (0..15).contains(&prec) {
        let shift = (prec * 4) as u32;
        let extra = (mant << shift) & ((1u64 << 60) - 1);
        mant >>= 60 - shift;
        if extra | (mant & 1) > 1u64 << 59 {
            mant += 1;
        }
        mant <<= 60 - shift;
        if mant & (1u64 << 61) != 0 {
            mant >>= 1;
            exp += 1;
        }
    }
    let hex = if fmt == 'X' { UDIGITS } else { LDIGITS };
    out.push('0');
    out.push(fmt);
    out.push((b'0' + ((mant >> 60) & 1) as u8) as char);
    mant <<= 4;
    if prec < 0 && mant != 0 {
        out.push('.');
        while mant != 0 {
            out.push(hex[((mant >> 60) & 15) as usize] as char);
            mant <<= 4;
        }
    } else if prec > 0 {
        out.push('.');
        for _ in 0..prec {
            out.push(hex[((mant >> 60) & 15) as usize] as char);
            mant <<= 4;
        }
    }
    out.push(if fmt == 'X' { 'P' } else { 'p' });
    if exp < 0 {
        out.push('-');
        exp = -exp;
    } else {
        out.push('+');
    }
    if exp < 10 {
        out.push('0');
    }
    out.push_str(&exp.to_string());
}

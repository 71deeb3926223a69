//! Framing of RESP requests: arrays of bulk strings (what every client sends) and
//! inline commands (what a person types into `telnet`).
//!
//! Our own small parser rather than a crate's: a request is only ever an array of
//! bulk strings, and what matters here is the limits, checked on the declared sizes
//! before any byte of a frame is buffered past them, so a client announcing a
//! 4 GiB bulk string is refused at once instead of being waited for. Framing
//! errors carry Redis's own wording; the connection answers
//! `-ERR Protocol error: ...` and closes, as Redis does, since the rest of the
//! stream cannot be trusted to start at a frame.

use std::ops::Range;

/// How large a request may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Most bytes in one bulk string.
    pub max_bulk: usize,
    /// Most arguments (the command's name included).
    pub max_args: usize,
    /// Most bytes of one inline command line.
    pub max_inline: usize,
    /// Most bytes of one whole request frame.
    pub max_frame: usize,
}

/// The longest inline command: Redis's own limit.
pub const MAX_INLINE: usize = 64 << 10;

/// The longest `*<count>` or `$<length>` line before its `\r\n`: a number of 20
/// digits and its prefix fit with room.
const MAX_HEADER_LINE: usize = 32;

/// A framing error: the text after `Protocol error: `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

/// One request parsed from the front of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Each argument's bytes, as ranges into the buffer (copied by no one: the
    /// connection slices them out of the frozen buffer).
    pub args: Vec<Range<usize>>,
    /// Bytes of the buffer the request took.
    pub len: usize,
    /// Whether it came inline: its arguments are unescaped copies in `inline`.
    pub inline: Option<Vec<Vec<u8>>>,
}

/// Parses the request at the start of `buf`: `Ok(None)` while it is incomplete.
/// An empty request (a blank inline line, `*0`, `*-1`) is a frame with no
/// arguments, which the caller skips.
///
/// # Errors
///
/// [`ProtocolError`] for bytes that are no request or a request over `limits`;
/// nothing after it can be parsed.
pub fn parse(buf: &[u8], limits: &FrameLimits) -> Result<Option<Frame>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => multibulk(buf, limits),
        Some(_) => inline(buf, limits),
    }
}

/// The index of the `\r` of the first `\r\n` at or after `from`, or `None` when
/// none is there yet.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let mut at = 0;
    while let Some(i) = memchr::memchr(b'\r', &rest[at..]) {
        let cr = at + i;
        if rest.get(cr + 1) == Some(&b'\n') {
            return Some(from + cr);
        }
        if cr + 1 >= rest.len() {
            return None;
        }
        at = cr + 1;
    }
    None
}

/// A strict decimal integer, as Redis's `string2ll`: an optional `-`, digits, no
/// sign `+`, no blanks, no leading zeros but for `0` itself.
fn integer(digits: &[u8]) -> Option<i64> {
    let (negative, body) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if body.is_empty() || body.len() > 19 || !body.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if body.len() > 1 && body[0] == b'0' {
        return None;
    }
    let mut n: i64 = 0;
    for &d in body {
        n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if negative { -n } else { n })
}

/// A `*<count>` or `$<length>` line starting at `at`: the number and where the next
/// line starts; `Ok(None)` while incomplete; `Err(None)` for a line that is no
/// number (the caller names which), `Err(Some(..))` for one too long.
fn header(
    buf: &[u8],
    at: usize,
    too_big: &'static str,
) -> Result<Option<(i64, usize)>, Option<ProtocolError>> {
    let Some(end) = line_end(buf, at) else {
        if buf.len() - at > MAX_HEADER_LINE {
            return Err(Some(ProtocolError(too_big.into())));
        }
        return Ok(None);
    };
    if end - at > MAX_HEADER_LINE {
        return Err(Some(ProtocolError(too_big.into())));
    }
    match integer(&buf[at + 1..end]) {
        Some(n) => Ok(Some((n, end + 2))),
        None => Err(None),
    }
}

fn multibulk(buf: &[u8], limits: &FrameLimits) -> Result<Option<Frame>, ProtocolError> {
    let (count, mut at) = match header(buf, 0, "too big mbulk count string") {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(None) => return Err(ProtocolError("invalid multibulk length".into())),
        Err(Some(e)) => return Err(e),
    };
    if count <= 0 {
        return Ok(Some(Frame {
            args: Vec::new(),
            len: at,
            inline: None,
        }));
    }
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    if count > limits.max_args {
        return Err(ProtocolError(format!(
            "invalid multibulk length: {count} arguments, over the limit of {}",
            limits.max_args
        )));
    }
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&other) => {
                return Err(ProtocolError(format!(
                    "expected '$', got '{}'",
                    char::from(other).escape_default()
                )));
            }
        }
        let (len, start) = match header(buf, at, "too big bulk count string") {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(None) => return Err(ProtocolError("invalid bulk length".into())),
            Err(Some(e)) => return Err(e),
        };
        let len = usize::try_from(len).map_err(|_| ProtocolError("invalid bulk length".into()))?;
        if len > limits.max_bulk {
            return Err(ProtocolError(format!(
                "invalid bulk length: {len} bytes, over the limit of {}",
                limits.max_bulk
            )));
        }
        let end = start
            .checked_add(len)
            .ok_or_else(|| ProtocolError("invalid bulk length".into()))?;
        if end > limits.max_frame {
            return Err(ProtocolError(format!(
                "request over the limit of {} bytes (max_body_bytes)",
                limits.max_frame
            )));
        }
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError("bulk string not followed by '\\r\\n'".into()));
        }
        args.push(start..end);
        at = end + 2;
    }
    Ok(Some(Frame {
        args,
        len: at,
        inline: None,
    }))
}

fn inline(buf: &[u8], limits: &FrameLimits) -> Result<Option<Frame>, ProtocolError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        if buf.len() > limits.max_inline {
            return Err(ProtocolError("too big inline request".into()));
        }
        return Ok(None);
    };
    if nl > limits.max_inline {
        return Err(ProtocolError("too big inline request".into()));
    }
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let words =
        split_args(line).ok_or_else(|| ProtocolError("unbalanced quotes in request".into()))?;
    if words.len() > limits.max_args {
        return Err(ProtocolError(format!(
            "invalid multibulk length: {} arguments, over the limit of {}",
            words.len(),
            limits.max_args
        )));
    }
    Ok(Some(Frame {
        args: Vec::new(),
        len: nl + 1,
        inline: Some(words),
    }))
}

/// Splits an inline command as `redis-cli` and Redis do: blanks separate words;
/// `"..."` takes the escapes `\n \r \t \b \a \\ \" \xHH`, `'...'` only `\'`; a
/// closing quote must be followed by a blank or the end. `None`: unbalanced.
fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut words = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= n {
            return Some(words);
        }
        let mut word = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            if in_double {
                let c = *line.get(i)?;
                if c == b'\\' && i + 3 < n && line[i + 1] == b'x' {
                    let hex = |b: u8| char::from(b).to_digit(16);
                    if let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3])) {
                        word.push(u8::try_from(h * 16 + l).unwrap_or(0));
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < n {
                    word.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                    i += 2;
                } else if c == b'"' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    word.push(c);
                    i += 1;
                }
            } else if in_single {
                let c = *line.get(i)?;
                if c == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    word.push(b'\'');
                    i += 2;
                } else if c == b'\'' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    word.push(c);
                    i += 1;
                }
            } else {
                match line.get(i) {
                    None => break,
                    Some(c) if c.is_ascii_whitespace() => break,
                    Some(b'"') => in_double = true,
                    Some(b'\'') => in_single = true,
                    Some(&c) => word.push(c),
                }
                i += 1;
            }
        }
        words.push(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FrameLimits = FrameLimits {
        max_bulk: 1024,
        max_args: 16,
        max_inline: 128,
        max_frame: 4096,
    };

    fn args(buf: &[u8]) -> Vec<Vec<u8>> {
        let frame = parse(buf, &LIMITS).unwrap().unwrap();
        assert_eq!(frame.len, buf.len());
        frame
            .inline
            .unwrap_or_else(|| frame.args.iter().map(|r| buf[r.clone()].to_vec()).collect())
    }

    #[test]
    fn arrays_of_bulk_strings() {
        assert_eq!(
            args(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$0\r\n\r\n"),
            vec![b"SET".to_vec(), b"a".to_vec(), Vec::new()]
        );
        // Binary-safe: a bulk string may hold \r\n.
        assert_eq!(args(b"*1\r\n$4\r\na\r\nb\r\n"), vec![b"a\r\nb".to_vec()]);
        assert!(args(b"*0\r\n").is_empty());
        assert!(args(b"*-1\r\n").is_empty());
    }

    #[test]
    fn incomplete_frames_wait() {
        let whole = b"*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut], &LIMITS).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(b"PING", &LIMITS).unwrap().is_none());
    }

    #[test]
    fn inline_commands() {
        assert_eq!(args(b"PING\r\n"), vec![b"PING".to_vec()]);
        assert_eq!(
            args(b"set  \"a b\\x41\" 'c\\'d'\n"),
            vec![b"set".to_vec(), b"a bA".to_vec(), b"c'd".to_vec()]
        );
        assert!(args(b"   \r\n").is_empty());
        assert_eq!(
            parse(b"set \"a\n", &LIMITS).unwrap_err().0,
            "unbalanced quotes in request"
        );
        assert_eq!(
            parse(&[b'a'; 200], &LIMITS).unwrap_err().0,
            "too big inline request"
        );
    }

    #[test]
    fn framing_errors_use_redis_words() {
        let err = |b: &[u8]| parse(b, &LIMITS).unwrap_err().0;
        assert_eq!(err(b"*x\r\n"), "invalid multibulk length");
        assert_eq!(err(b"*1\r\n:1\r\n"), "expected '$', got ':'");
        assert_eq!(err(b"*1\r\n$x\r\n"), "invalid bulk length");
        assert_eq!(err(b"*1\r\n$-1\r\n"), "invalid bulk length");
        assert!(err(b"*17\r\n").contains("over the limit of 16"));
        assert!(err(b"*1\r\n$1025\r\n").contains("over the limit of 1024"));
        assert_eq!(
            err(b"*1\r\n$1\r\nab\r\n"),
            "bulk string not followed by '\\r\\n'"
        );
        assert_eq!(
            err(&[b"*".as_slice(), &[b'1'; 40]].concat()),
            "too big mbulk count string"
        );
        assert_eq!(err(b"*01\r\n"), "invalid multibulk length");
        assert_eq!(err(b"*+1\r\n"), "invalid multibulk length");
    }

    fn encode(commands: &[Args]) -> Vec<u8> {
        let mut out = Vec::new();
        for args in commands {
            out.extend(format!("*{}\r\n", args.len()).as_bytes());
            for a in args {
                out.extend(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a);
                out.extend(b"\r\n");
            }
        }
        out
    }

    /// Every frame at the front of `buf`, as a connection reads them, and what is
    /// left unparsed.
    /// One command's arguments.
    type Args = Vec<Vec<u8>>;

    fn frames(buf: &[u8]) -> Result<(Vec<Args>, usize), ProtocolError> {
        let mut at = 0;
        let mut out = Vec::new();
        while let Some(frame) = parse(&buf[at..], &LIMITS)? {
            assert!(frame.len > 0 && frame.len <= buf.len() - at);
            let args = frame.inline.clone().unwrap_or_else(|| {
                frame
                    .args
                    .iter()
                    .map(|r| buf[at + r.start..at + r.end].to_vec())
                    .collect()
            });
            out.push(args);
            at += frame.len;
            if at == buf.len() {
                break;
            }
        }
        Ok((out, at))
    }

    proptest::proptest! {
        /// Pipelined frames come out as they went in, however the bytes are cut
        /// into reads: a cut frame waits, the rest of it completes it.
        #[test]
        fn frames_survive_any_cut(
            commands in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 1..6),
                1..8,
            ),
            cut in 0_usize..2000,
        ) {
            let bytes = encode(&commands);
            let cut = cut % (bytes.len() + 1);
            let (first, used) = frames(&bytes[..cut]).unwrap();
            let rest = bytes[used..].to_vec();
            let (second, used2) = frames(&rest).unwrap();
            proptest::prop_assert_eq!(used2, rest.len());
            let all: Vec<_> = first.into_iter().chain(second).collect();
            proptest::prop_assert_eq!(all, commands);
        }

        /// Any bytes at all: a frame, a wait or a framing error, never a panic,
        /// and a frame never claims more bytes than there are.
        #[test]
        fn any_bytes_are_parsed_or_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = frames(&bytes);
            let mut star = b"*".to_vec();
            star.extend_from_slice(&bytes);
            let _ = frames(&star);
        }
    }

    #[test]
    fn whole_frames_over_the_limit_are_refused_before_they_arrive() {
        let limits = FrameLimits {
            max_frame: 100,
            ..LIMITS
        };
        let e = parse(b"*2\r\n$60\r\n", &limits);
        assert!(e.is_ok());
        let mut big = b"*2\r\n$60\r\n".to_vec();
        big.extend([b'x'; 60]);
        big.extend(b"\r\n$60\r\n");
        assert!(
            parse(&big, &limits)
                .unwrap_err()
                .0
                .contains("max_body_bytes")
        );
    }
}

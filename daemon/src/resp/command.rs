//! What each command means: the table `COMMAND` and `COMMAND DOCS` list, and the
//! classification of one parsed command into a [`Step`] the connection runs.
//!
//! Marks (`SET NX`, `SETNX`, `BF.ADD`, `BF.MADD`, `ONCELY.MARK`) become
//! [`Step::Mark`], which the connection gathers with its neighbours into one
//! tracker call; everything is validated here, per command, so one bad command
//! fails alone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use oncely::{ClaimOutcome, Tracker, Verdict};

use super::handshake;
use super::reply::Reply;
use crate::server::metrics::{ClaimEnd, Protocol};
use crate::server::{ApiError, AppState};

/// A command as listed by `COMMAND` and documented by `COMMAND DOCS`.
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    /// Redis's arity: exact when positive, at least `-arity` when negative (the
    /// command's name counted).
    pub(crate) arity: i64,
    pub(crate) flags: &'static [&'static str],
    /// First key's position, 0 for none (cluster-aware clients route on it).
    pub(crate) first_key: i64,
    pub(crate) group: &'static str,
    pub(crate) syntax: &'static str,
    pub(crate) summary: &'static str,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    first_key: i64,
    group: &'static str,
    syntax: &'static str,
    summary: &'static str,
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key,
        group,
        syntax,
        summary,
    }
}

const W: &[&str] = &["write", "fast"];
const R: &[&str] = &["readonly", "fast"];
const C: &[&str] = &["fast", "loading", "stale"];
const N: &[&str] = &["noscript", "loading", "stale", "fast", "no_auth"];

/// Every command served, in the order `COMMAND` lists them.
pub(crate) const COMMANDS: &[Spec] = &[
    spec(
        "set",
        -3,
        W,
        1,
        "string",
        "SET key value NX [EX seconds | PX milliseconds]",
        "Marks key (an event ID) in resp_namespace: OK when new, nil when seen. NX is required; the expiry is a lower bound, at most the namespace's window (generations - 1) x generation_span; none means the window.",
    ),
    spec(
        "setnx",
        3,
        W,
        1,
        "string",
        "SETNX key value",
        "Marks key in resp_namespace: 1 when new, 0 when seen.",
    ),
    spec(
        "bf.add",
        3,
        W,
        1,
        "bf",
        "BF.ADD namespace item",
        "Marks item in namespace: 1 when new, 0 when seen (any verdict but new).",
    ),
    spec(
        "bf.madd",
        -3,
        W,
        1,
        "bf",
        "BF.MADD namespace item [item ...]",
        "Marks items in namespace in one write: an array of 1 (new) or 0 (seen).",
    ),
    spec(
        "bf.exists",
        3,
        R,
        1,
        "bf",
        "BF.EXISTS namespace item",
        "Whether item was seen in namespace (1) or not (0), without marking.",
    ),
    spec(
        "bf.mexists",
        -3,
        R,
        1,
        "bf",
        "BF.MEXISTS namespace item [item ...]",
        "BF.EXISTS for several items, without marking.",
    ),
    spec(
        "bf.reserve",
        4,
        &["write", "denyoom"],
        1,
        "bf",
        "BF.RESERVE namespace error_rate capacity",
        "Creates namespace with fp_rate error_rate and generation_capacity capacity, the rest by default; an existing namespace is an error and is not changed.",
    ),
    spec(
        "oncely.mark",
        -4,
        W,
        1,
        "oncely",
        "ONCELY.MARK namespace [OWNER owner] IDS id [id ...]",
        "Check-and-mark: one verdict per ID (new, replayed, duplicate, probable_duplicate, in_progress). The same OWNER (one delivery attempt) marking again gets replayed.",
    ),
    spec(
        "oncely.check",
        -4,
        R,
        1,
        "oncely",
        "ONCELY.CHECK namespace IDS id [id ...]",
        "Verdicts without marking: new means unseen.",
    ),
    spec(
        "oncely.claim",
        7,
        W,
        1,
        "oncely",
        "ONCELY.CLAIM namespace id OWNER owner LEASE milliseconds",
        "Claims id for owner for the lease: verdict acquired, in_progress or duplicate, with until_ms, replayed, taken_over.",
    ),
    spec(
        "oncely.complete",
        5,
        W,
        1,
        "oncely",
        "ONCELY.COMPLETE namespace id OWNER owner",
        "Turns owner's claim into a done mark: OK.",
    ),
    spec(
        "oncely.release",
        5,
        W,
        1,
        "oncely",
        "ONCELY.RELEASE namespace id OWNER owner",
        "Forgets owner's claim so a redelivery can take it: OK.",
    ),
    spec(
        "oncely.checkpoint",
        -4,
        W,
        2,
        "oncely",
        "ONCELY.CHECKPOINT GET namespace consumer | ONCELY.CHECKPOINT SET namespace consumer position [NX | IFEQ expected]",
        "Reads (nil when none) or durably stores a consumer's last processed position; with NX only if none is stored, with IFEQ only if `expected` is (else CHECKPOINT_CONFLICT, nothing changed).",
    ),
    spec(
        "oncely.forget",
        -3,
        W,
        1,
        "oncely",
        "ONCELY.FORGET namespace id [id ...]",
        "Forgets IDs so that the next caller marking one gets it as new: 1 where an exact mark was deleted, 0 where nothing exact remembered it, a live claim holds it (left alone), or it was forgotten already.",
    ),
    spec(
        "oncely.ns",
        -2,
        R,
        0,
        "oncely",
        "ONCELY.NS INFO namespace | ONCELY.NS LIST",
        "A namespace's configuration and statistics, or every namespace's name.",
    ),
    spec(
        "ping",
        -1,
        C,
        0,
        "connection",
        "PING [message]",
        "PONG, or the message.",
    ),
    spec(
        "echo",
        2,
        C,
        0,
        "connection",
        "ECHO message",
        "The message.",
    ),
    spec(
        "hello",
        -1,
        N,
        0,
        "connection",
        "HELLO [protover [AUTH username password] [SETNAME clientname]]",
        "Chooses RESP2 or RESP3, authenticates (the token is the password, any user name), names the connection; answers the server's properties.",
    ),
    spec(
        "auth",
        -2,
        N,
        0,
        "connection",
        "AUTH [username] token",
        "Authenticates the connection with one of the daemon's tokens.",
    ),
    spec(
        "client",
        -2,
        C,
        0,
        "connection",
        "CLIENT SETNAME name | GETNAME | SETINFO LIB-NAME|LIB-VER value | ID | INFO",
        "The connection's name, library and ID.",
    ),
    spec(
        "select",
        2,
        C,
        0,
        "connection",
        "SELECT 0",
        "Only database 0 exists.",
    ),
    spec(
        "command",
        -1,
        &["loading", "stale"],
        0,
        "server",
        "COMMAND [COUNT | INFO name ... | DOCS [name ...] | LIST]",
        "These commands.",
    ),
    spec(
        "info",
        -1,
        &["loading", "stale"],
        0,
        "server",
        "INFO [section ...]",
        "Server information, with a Redis-compatible redis_version.",
    ),
    spec(
        "config",
        -2,
        &["loading", "stale"],
        0,
        "server",
        "CONFIG GET parameter",
        "Answers no parameters: Oncely's settings are its own (oncelyd serve --help).",
    ),
    spec(
        "reset",
        1,
        N,
        0,
        "connection",
        "RESET",
        "Back to a fresh connection: RESP2, no name, unauthenticated when tokens are set, no transaction.",
    ),
    spec(
        "quit",
        -1,
        N,
        0,
        "connection",
        "QUIT",
        "OK, then the connection closes.",
    ),
    spec(
        "multi",
        1,
        C,
        0,
        "transactions",
        "MULTI",
        "Queues the commands up to EXEC, which runs them as one batch.",
    ),
    spec(
        "exec",
        1,
        &["loading", "stale"],
        0,
        "transactions",
        "EXEC",
        "Runs the queued commands (their marks in one write): an array of their answers.",
    ),
    spec(
        "discard",
        1,
        C,
        0,
        "transactions",
        "DISCARD",
        "Drops the queued commands.",
    ),
    spec(
        "unwatch",
        1,
        C,
        0,
        "transactions",
        "UNWATCH",
        "OK: nothing is ever watched (WATCH is refused).",
    ),
];

/// Redis commands that would overwrite or delete data, or read values Oncely does
/// not keep: refused by name, changing nothing.
const REFUSED: &[&str] = &[
    "get",
    "getdel",
    "getex",
    "getset",
    "mget",
    "mset",
    "msetnx",
    "setex",
    "psetex",
    "setrange",
    "append",
    "incr",
    "incrby",
    "decr",
    "decrby",
    "incrbyfloat",
    "del",
    "unlink",
    "flushall",
    "flushdb",
    "expire",
    "pexpire",
    "expireat",
    "pexpireat",
    "persist",
    "rename",
    "renamenx",
    "copy",
    "move",
    "swapdb",
    "restore",
    "keys",
    "scan",
    "exists",
    "ttl",
    "pttl",
    "type",
    "dump",
    "bf.insert",
    "bf.scandump",
    "bf.loadchunk",
    "watch",
];

/// Looks a command up by name (any case).
pub(crate) fn find(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

/// A command's tracker call, run on the blocking pool under admission.
pub(crate) type TrackerCall = Box<dyn FnOnce(&Tracker) -> Result<Reply, ApiError> + Send>;

/// What the connection does for one command.
pub(crate) enum Step {
    /// Answer at once.
    Reply(Reply),
    /// Marks, gathered with neighbouring marks of the same namespace.
    Mark {
        ns: Arc<str>,
        ids: Vec<Bytes>,
        owner: Option<String>,
        shape: Shape,
    },
    /// A check without marking.
    Check {
        ns: Arc<str>,
        ids: Vec<Bytes>,
        shape: Shape,
    },
    /// Any other tracker call.
    Call(TrackerCall),
    /// `EXEC`: the queued commands, as one batch.
    Exec(Vec<Vec<Bytes>>),
    /// `QUIT`: `+OK`, then close.
    Quit,
}

/// How a mark's or check's verdicts are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `SET NX`: `+OK` or nil; the expiry to check against the window.
    Set { expiry_ms: Option<u64> },
    /// `SETNX`, `BF.ADD`, `BF.EXISTS`: one integer.
    One,
    /// `BF.MADD`, `BF.MEXISTS`: integers.
    Many,
    /// `ONCELY.*`: verdict names.
    Verdicts,
}

impl Shape {
    /// The answer to a mark (`marking`) or a check.
    pub(crate) fn reply(
        self,
        verdicts: Result<Vec<Verdict>, oncely::Error>,
        marking: bool,
    ) -> Reply {
        let verdicts = match verdicts {
            Ok(v) => v,
            Err(e) => return e.into(),
        };
        // A check's `new` is "unseen"; anything else was seen.
        let seen = |v: &Verdict| !v.is_new();
        let bit = |v: &Verdict| {
            if marking {
                i64::from(v.is_new())
            } else {
                i64::from(seen(v))
            }
        };
        match self {
            Self::Set { .. } => match verdicts.first() {
                Some(v) if v.is_new() => Reply::OK,
                _ => Reply::Nil,
            },
            Self::One => Reply::Int(verdicts.first().map_or(0, bit)),
            Self::Many => Reply::Array(verdicts.iter().map(|v| Reply::Int(bit(v))).collect()),
            Self::Verdicts => Reply::Array(
                verdicts
                    .iter()
                    .map(|v| Reply::Simple(verdict_name(*v).into()))
                    .collect(),
            ),
        }
    }
}

/// A verdict's name over RESP: HTTP's, but a replayed `new` is `replayed`.
pub(crate) const fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Replayed => "replayed",
        other => other.as_str(),
    }
}

/// A transaction being queued.
#[derive(Debug, Default)]
pub(crate) struct Multi {
    pub(crate) queued: Vec<Vec<Bytes>>,
    /// Bytes of the queued arguments: with the count, bounded (see [`classify`]).
    pub(crate) bytes: usize,
    /// A queued command was refused: `EXEC` discards them all.
    pub(crate) aborted: bool,
}

/// One connection's state.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: u64,
    pub(crate) resp3: bool,
    pub(crate) authed: bool,
    pub(crate) name: Option<Bytes>,
    pub(crate) lib_name: Option<Bytes>,
    pub(crate) lib_ver: Option<Bytes>,
    pub(crate) multi: Option<Multi>,
    /// When the connection was accepted (`CLIENT INFO`'s `age`; kept by `RESET`).
    pub(crate) since: std::time::Instant,
}

impl Session {
    pub(crate) fn new(id: u64, state: &AppState) -> Self {
        Self {
            since: std::time::Instant::now(),
            id,
            resp3: false,
            authed: !state.requires_token(),
            name: None,
            lib_name: None,
            lib_ver: None,
            multi: None,
        }
    }
}

/// What every command's classification needs besides the session.
pub(crate) struct Context<'a> {
    pub(crate) state: &'a AppState,
    /// `resp_namespace`.
    pub(crate) set_namespace: &'a Arc<str>,
    pub(crate) connected: usize,
}

fn err(text: impl Into<std::borrow::Cow<'static, str>>) -> Step {
    Step::Reply(Reply::error(text))
}

/// `ERR wrong number of arguments for 'x' command`, in Redis's words.
pub(crate) fn arity_error(name: &str) -> Reply {
    Reply::error(format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

fn lossy(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let mut out: String = s.chars().take(128).collect();
    if s.chars().count() > 128 {
        out.push_str("...");
    }
    out
}

/// The answer to an unknown command, in Redis's words.
fn unknown(args: &[Bytes]) -> Reply {
    let mut text = format!(
        "ERR unknown command '{}', with args beginning with: ",
        lossy(&args[0])
    );
    for a in args.iter().skip(1).take(8) {
        text.push_str(&format!("'{}' ", lossy(a)));
    }
    Reply::error(text)
}

fn arity_ok(spec: &Spec, n: usize) -> bool {
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    if spec.arity >= 0 {
        n == spec.arity
    } else {
        n >= -spec.arity
    }
}

fn namespace(arg: &Bytes) -> Result<Arc<str>, Reply> {
    let name = std::str::from_utf8(arg)
        .map_err(|_| Reply::error("ERR invalid namespace name: not UTF-8"))?;
    oncely::NamespaceName::new(name).map_err(Reply::from)?;
    Ok(Arc::from(name))
}

fn text(arg: &Bytes, what: &str) -> Result<String, Reply> {
    String::from_utf8(arg.to_vec()).map_err(|_| Reply::error(format!("ERR {what} is not UTF-8")))
}

fn keyword(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

fn positive(arg: &[u8]) -> Option<u64> {
    std::str::from_utf8(arg)
        .ok()?
        .parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
}

/// The answer to a command this server does not serve, inside a transaction or
/// not: a Redis command that would overwrite, delete or read values is refused by
/// name (after `NOAUTH`, as Redis checks a known command's caller first); any
/// other name is unknown, as Redis answers it whoever asks.
fn not_served(session: &Session, args: &[Bytes]) -> Reply {
    let lower = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    if !REFUSED.contains(&lower.as_str()) {
        return unknown(args);
    }
    if !session.authed {
        return Reply::error("NOAUTH Authentication required.");
    }
    if lower == "watch" {
        return Reply::error(
            "ERR WATCH is not supported: marks need no optimistic locking, since each \
             mark is atomic (MULTI/EXEC without WATCH runs as one batch)",
        );
    }
    Reply::error(format!(
        "ERR '{}' is refused: Oncely never overwrites, deletes or returns values \
         Redis-style (marks: SET key value NX, BF.ADD; claims: ONCELY.CLAIM and \
         ONCELY.RELEASE); nothing was changed",
        lower.to_ascii_uppercase()
    ))
}

/// Classifies one command (at least one argument) for `session`.
pub(crate) fn classify(session: &mut Session, ctx: &Context<'_>, args: Vec<Bytes>) -> Step {
    let name = args[0].clone();
    let spec = find(&name);
    // Transactions first: inside MULTI everything but its own commands is queued.
    if session.multi.is_some() {
        let own = ["exec", "discard", "multi", "watch", "quit", "reset"];
        if !spec.is_some_and(|s| own.contains(&s.name)) && !keyword(&name, "watch") {
            let Some(spec) = spec else {
                if let Some(m) = session.multi.as_mut() {
                    m.aborted = true;
                }
                return Step::Reply(not_served(session, &args));
            };
            if !arity_ok(spec, args.len()) {
                if let Some(m) = session.multi.as_mut() {
                    m.aborted = true;
                }
                return Step::Reply(arity_error(spec.name));
            }
            if let Some(m) = session.multi.as_mut() {
                // One transaction holds at most what one command may: `max_ids` + 8
                // commands and `max_body_bytes` of arguments, so that a client
                // queueing without end cannot take the daemon's memory.
                let limits = ctx.state.limits();
                let size: usize = args.iter().map(Bytes::len).sum();
                if m.queued.len() >= limits.max_ids.saturating_add(8)
                    || m.bytes.saturating_add(size) > limits.max_body_bytes
                {
                    m.aborted = true;
                    return err(format!(
                        "ERR a transaction holds at most {} commands and {} bytes of \
                         arguments (max_ids + 8, max_body_bytes); EXEC will discard it",
                        limits.max_ids.saturating_add(8),
                        limits.max_body_bytes
                    ));
                }
                m.bytes += size;
                m.queued.push(args);
            }
            return Step::Reply(Reply::Simple("QUEUED".into()));
        }
    }
    let Some(spec) = spec else {
        return Step::Reply(not_served(session, &args));
    };
    if !arity_ok(spec, args.len()) {
        return Step::Reply(arity_error(spec.name));
    }
    if !session.authed && !spec.flags.contains(&"no_auth") {
        return err("NOAUTH Authentication required.");
    }
    match spec.name {
        "set" => set(ctx, &args),
        "setnx" => Step::Mark {
            ns: Arc::clone(ctx.set_namespace),
            ids: vec![args[1].clone()],
            owner: None,
            shape: Shape::One,
        },
        "bf.add" | "bf.madd" => match namespace(&args[1]) {
            Ok(ns) => too_many(ctx, args.len() - 2).unwrap_or_else(|| Step::Mark {
                ns,
                ids: args[2..].to_vec(),
                owner: None,
                shape: if spec.name == "bf.add" {
                    Shape::One
                } else {
                    Shape::Many
                },
            }),
            Err(e) => Step::Reply(e),
        },
        "bf.exists" | "bf.mexists" => match namespace(&args[1]) {
            Ok(ns) => too_many(ctx, args.len() - 2).unwrap_or_else(|| Step::Check {
                ns,
                ids: args[2..].to_vec(),
                shape: if spec.name == "bf.exists" {
                    Shape::One
                } else {
                    Shape::Many
                },
            }),
            Err(e) => Step::Reply(e),
        },
        "bf.reserve" => reserve(ctx, &args),
        "oncely.mark" | "oncely.check" => oncely_ids(ctx, spec.name == "oncely.mark", &args),
        "oncely.claim" | "oncely.complete" | "oncely.release" => claims(ctx, spec.name, &args),
        "oncely.checkpoint" => checkpoint(&args),
        "oncely.forget" => forget(ctx, &args),
        "oncely.ns" => ns_command(&args),
        "quit" => Step::Quit,
        "exec" => match session.multi.take() {
            None => err("ERR EXEC without MULTI"),
            Some(m) if m.aborted => {
                err("EXECABORT Transaction discarded because of previous errors.")
            }
            Some(m) => Step::Exec(m.queued),
        },
        "multi" => {
            if session.multi.is_some() {
                return err("ERR MULTI calls can not be nested");
            }
            session.multi = Some(Multi::default());
            Step::Reply(Reply::OK)
        }
        "discard" => match session.multi.take() {
            None => err("ERR DISCARD without MULTI"),
            Some(_) => Step::Reply(Reply::OK),
        },
        "unwatch" => Step::Reply(Reply::OK),
        _ => Step::Reply(handshake::answer(session, ctx, spec, &args)),
    }
}

fn too_many(ctx: &Context<'_>, n: usize) -> Option<Step> {
    let max = ctx.state.limits().max_ids;
    (n > max).then(|| {
        err(format!(
            "ERR {n} IDs in one command, over the limit of {max} (max_ids); nothing was done"
        ))
    })
}

/// `SET key value NX [EX s | PX ms]`, options in any order.
fn set(ctx: &Context<'_>, args: &[Bytes]) -> Step {
    let mut nx = false;
    let mut expiry_ms = None;
    let mut i = 3;
    while i < args.len() {
        let opt = &args[i];
        if keyword(opt, "NX") {
            nx = true;
        } else if keyword(opt, "EX") || keyword(opt, "PX") {
            if expiry_ms.is_some() {
                return err("ERR syntax error");
            }
            let Some(n) = args.get(i + 1) else {
                return err("ERR syntax error");
            };
            let Some(n) = positive(n) else {
                return err("ERR invalid expire time in 'set' command");
            };
            let ms = if keyword(opt, "EX") {
                n.checked_mul(1000)
            } else {
                Some(n)
            };
            let Some(ms) = ms else {
                return err("ERR invalid expire time in 'set' command");
            };
            expiry_ms = Some(ms);
            i += 1;
        } else if ["XX", "GET", "KEEPTTL", "EXAT", "PXAT", "IFEQ"]
            .iter()
            .any(|w| keyword(opt, w))
        {
            return err(format!(
                "ERR SET {} is refused: Oncely marks keys once and never overwrites, reads or \
                 re-times them; use SET key value NX [EX seconds | PX milliseconds]; nothing \
                 was changed",
                lossy(opt).to_ascii_uppercase()
            ));
        } else {
            return err("ERR syntax error");
        }
        i += 1;
    }
    if !nx {
        return err(
            "ERR SET without NX is refused: Oncely marks keys once and never overwrites them; \
             use SET key value NX [EX seconds | PX milliseconds]; nothing was changed",
        );
    }
    Step::Mark {
        ns: Arc::clone(ctx.set_namespace),
        ids: vec![args[1].clone()],
        owner: None,
        shape: Shape::Set { expiry_ms },
    }
}

/// The error for an expiry beyond the namespace's window.
pub(crate) fn expiry_error(ns: &str, expiry_ms: u64, window: Duration) -> Reply {
    Reply::error(format!(
        "ERR expiry of {expiry_ms} ms is longer than namespace {ns}'s window of {} ms \
         ((generations - 1) x generation_span): Oncely cannot promise to remember the key \
         that long; nothing was marked",
        window.as_millis()
    ))
}

/// The remembering window of a namespace's configuration.
pub(crate) fn window(config: &oncely::NamespaceConfig) -> Duration {
    config.generation_span() * config.generations().saturating_sub(1)
}

fn reserve(ctx: &Context<'_>, args: &[Bytes]) -> Step {
    let ns = match namespace(&args[1]) {
        Ok(ns) => ns,
        Err(e) => return Step::Reply(e),
    };
    let Some(rate) = std::str::from_utf8(&args[2])
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|r| *r > 0.0 && *r < 1.0)
    else {
        return err("ERR (0 < error rate range < 1)");
    };
    let Some(capacity) = positive(&args[3]) else {
        return err("ERR (capacity should be larger than 0)");
    };
    let state = ctx.state.clone();
    Step::Call(Box::new(move |tracker| {
        let config = oncely::NamespaceConfig::builder()
            .fp_rate(rate)
            .generation_capacity(capacity)
            .build()?;
        // Under the configuration lock: no PUT, PATCH or DELETE falls between the
        // look and the creation, so an existing namespace is never re-created.
        let _config = state.config_lock();
        match tracker.namespace_info(&ns) {
            Ok(_) => return Ok(Reply::error("ERR item exists")),
            Err(oncely::Error::UnknownNamespace(_)) => {}
            Err(e) => return Err(e.into()),
        }
        match tracker.configure_namespace_with(&ns, config, oncely::DropPolicy::Refuse)? {
            oncely::Configured::Created => Ok(Reply::OK),
            // Not reachable under the lock; said rather than assumed.
            oncely::Configured::Updated => Ok(Reply::error("ERR item exists")),
        }
    }))
}

/// `ONCELY.MARK ns [OWNER o] IDS id...` and `ONCELY.CHECK ns IDS id...`.
fn oncely_ids(ctx: &Context<'_>, marking: bool, args: &[Bytes]) -> Step {
    let ns = match namespace(&args[1]) {
        Ok(ns) => ns,
        Err(e) => return Step::Reply(e),
    };
    let mut owner = None;
    let mut i = 2;
    loop {
        match args.get(i) {
            Some(a) if keyword(a, "IDS") => break,
            Some(a) if marking && keyword(a, "OWNER") && owner.is_none() => {
                let Some(o) = args.get(i + 1) else {
                    return err("ERR syntax error: OWNER needs a value");
                };
                owner = match text(o, "the owner") {
                    Ok(o) => Some(o),
                    Err(e) => return Step::Reply(e),
                };
                i += 2;
            }
            _ => {
                return err(if marking {
                    "ERR syntax error: ONCELY.MARK namespace [OWNER owner] IDS id [id ...]"
                } else {
                    "ERR syntax error: ONCELY.CHECK namespace IDS id [id ...]"
                });
            }
        }
    }
    let ids = args[i + 1..].to_vec();
    if ids.is_empty() {
        return err("ERR syntax error: IDS needs at least one ID");
    }
    if let Some(refused) = too_many(ctx, ids.len()) {
        return refused;
    }
    if marking {
        Step::Mark {
            ns,
            ids,
            owner,
            shape: Shape::Verdicts,
        }
    } else {
        Step::Check {
            ns,
            ids,
            shape: Shape::Verdicts,
        }
    }
}

/// The answer to a claim: a map (RESP2: a flat array) as HTTP's JSON has it.
pub(crate) fn claim_reply(outcome: ClaimOutcome) -> Reply {
    let (verdict, until, replayed, taken_over) = match outcome {
        ClaimOutcome::Acquired {
            until,
            replayed,
            taken_over,
        } => ("acquired", Some(until.as_millis()), replayed, taken_over),
        ClaimOutcome::InProgress { until } => {
            ("in_progress", Some(until.as_millis()), false, false)
        }
        ClaimOutcome::Duplicate => ("duplicate", None, false, false),
        ClaimOutcome::ProbableDuplicate => ("probable_duplicate", None, false, false),
    };
    Reply::map(vec![
        ("verdict", Reply::word(verdict)),
        (
            "until_ms",
            until.map_or(Reply::Nil, |u| {
                Reply::Int(i64::try_from(u).unwrap_or(i64::MAX))
            }),
        ),
        ("replayed", Reply::Bool(replayed)),
        ("taken_over", Reply::Bool(taken_over)),
    ])
}

fn claims(ctx: &Context<'_>, which: &'static str, args: &[Bytes]) -> Step {
    let ns = match namespace(&args[1]) {
        Ok(ns) => ns,
        Err(e) => return Step::Reply(e),
    };
    let id = args[2].clone();
    if !keyword(&args[3], "OWNER") {
        return err(format!(
            "ERR syntax error: {}",
            find(which.as_bytes()).map_or("", |s| s.syntax)
        ));
    }
    let owner = match text(&args[4], "the owner") {
        Ok(o) => o,
        Err(e) => return Step::Reply(e),
    };
    let m = ctx.state.clone();
    match which {
        "oncely.claim" => {
            if !keyword(&args[5], "LEASE") {
                return err(
                    "ERR syntax error: ONCELY.CLAIM namespace id OWNER owner LEASE milliseconds",
                );
            }
            let Some(lease) = positive(&args[6]) else {
                return err("ERR invalid lease: milliseconds, at least 1");
            };
            Step::Call(Box::new(move |tracker| {
                let outcome = tracker.claim(&ns, &id, &owner, Duration::from_millis(lease))?;
                m.metrics().count_claim(Protocol::Resp, &ns, outcome);
                Ok(claim_reply(outcome))
            }))
        }
        "oncely.complete" => Step::Call(Box::new(move |tracker| {
            tracker.complete(&ns, &id, &owner)?;
            m.metrics()
                .count_claim_end(Protocol::Resp, &ns, ClaimEnd::Completed);
            Ok(Reply::OK)
        })),
        _ => Step::Call(Box::new(move |tracker| {
            tracker.release(&ns, &id, &owner)?;
            m.metrics()
                .count_claim_end(Protocol::Resp, &ns, ClaimEnd::Released);
            Ok(Reply::OK)
        })),
    }
}

fn checkpoint(args: &[Bytes]) -> Step {
    let get = keyword(&args[1], "GET");
    // SET's precondition, as Redis's SET takes one: NX (none stored yet) or IFEQ.
    let precondition = match args.get(5..).unwrap_or_default() {
        [] => Some(None),
        [nx] if keyword(nx, "NX") => Some(Some(None)),
        [ifeq, expected] if keyword(ifeq, "IFEQ") => Some(Some(Some(expected))),
        _ => None,
    };
    if !(get && args.len() == 4
        || keyword(&args[1], "SET") && args.len() >= 5 && precondition.is_some())
    {
        return err(
            "ERR syntax error: ONCELY.CHECKPOINT GET namespace consumer | ONCELY.CHECKPOINT SET namespace consumer position [NX | IFEQ expected]",
        );
    }
    let ns = match namespace(&args[2]) {
        Ok(ns) => ns,
        Err(e) => return Step::Reply(e),
    };
    let consumer = match text(&args[3], "the consumer") {
        Ok(c) => c,
        Err(e) => return Step::Reply(e),
    };
    if get {
        return Step::Call(Box::new(move |tracker| {
            Ok(tracker
                .checkpoint(&ns, &consumer)?
                .map_or(Reply::Nil, Reply::text))
        }));
    }
    let position = match text(&args[4], "the position") {
        Ok(p) => p,
        Err(e) => return Step::Reply(e),
    };
    let expected = match precondition.flatten() {
        None => None,
        Some(None) => Some(None),
        Some(Some(e)) => match text(e, "the expected position") {
            Ok(e) => Some(Some(e)),
            Err(e) => return Step::Reply(e),
        },
    };
    Step::Call(Box::new(move |tracker| {
        match &expected {
            Some(e) => tracker.set_checkpoint_if(&ns, &consumer, e.as_deref(), &position),
            None => tracker.set_checkpoint(&ns, &consumer, &position),
        }?;
        Ok(Reply::OK)
    }))
}

fn forget(ctx: &Context<'_>, args: &[Bytes]) -> Step {
    let ns = match namespace(&args[1]) {
        Ok(ns) => ns,
        Err(e) => return Step::Reply(e),
    };
    if let Some(refused) = too_many(ctx, args.len() - 2) {
        return refused;
    }
    let ids = args[2..].to_vec();
    let m = ctx.state.clone();
    Step::Call(Box::new(move |tracker| {
        let forgotten = tracker.forget(&ns, &ids)?;
        m.metrics().count_forgets(Protocol::Resp, &forgotten);
        Ok(Reply::Array(
            forgotten
                .into_iter()
                .map(|f| Reply::Int(i64::from(f)))
                .collect(),
        ))
    }))
}

fn ns_command(args: &[Bytes]) -> Step {
    if keyword(&args[1], "LIST") && args.len() == 2 {
        return Step::Call(Box::new(|tracker| {
            Ok(Reply::Array(
                tracker.namespaces().into_iter().map(Reply::text).collect(),
            ))
        }));
    }
    if !(keyword(&args[1], "INFO") && args.len() == 3) {
        return err("ERR syntax error: ONCELY.NS INFO namespace | ONCELY.NS LIST");
    }
    let ns = match namespace(&args[2]) {
        Ok(ns) => ns,
        Err(e) => return Step::Reply(e),
    };
    Step::Call(Box::new(move |tracker| {
        let info = tracker.namespace_info(&ns)?;
        let c = &info.config;
        let int = |n: u64| Reply::Int(i64::try_from(n).unwrap_or(i64::MAX));
        let generations = info
            .generations
            .iter()
            .map(|g| {
                Reply::map(vec![
                    ("id", int(g.id)),
                    ("opened_at", int(g.opened_at)),
                    ("sealed_at", g.sealed_at.map_or(Reply::Nil, int)),
                    ("ids", int(g.ids)),
                    ("capacity", int(g.capacity)),
                    ("exact", Reply::Bool(g.exact)),
                    ("memory_bytes", int(g.memory_bytes)),
                ])
            })
            .collect();
        let ms = |d: Duration| int(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Ok(Reply::map(vec![
            ("name", Reply::text(info.name.clone())),
            ("generations", int(u64::from(c.generations()))),
            ("generation_capacity", int(c.generation_capacity())),
            ("generation_span_ms", ms(c.generation_span())),
            ("fp_rate", Reply::Double(c.fp_rate())),
            ("exact_generations", int(u64::from(c.exact_generations()))),
            ("window_ms", ms(window(c))),
            ("estimated_fp", Reply::Double(info.estimated_fp)),
            ("memory_bytes", int(info.memory_bytes)),
            ("charged_bytes", int(info.charged_bytes)),
            ("claims", int(info.claims)),
            ("live_generations", Reply::Array(generations)),
        ]))
    }))
}

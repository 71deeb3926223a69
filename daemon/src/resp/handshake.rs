//! The connection commands clients send before and around their work: `PING`,
//! `ECHO`, `HELLO`, `AUTH`, `CLIENT`, `SELECT`, `COMMAND`, `INFO`, `CONFIG GET`,
//! `RESET`, answered the way Redis answers them, since clients parse these replies
//! strictly (go-redis and Lettuce `HELLO 3`'s map, go-redis `CLIENT SETINFO`,
//! redis-py's cluster discovery `COMMAND`).

use bytes::Bytes;

use super::command::{COMMANDS, Context, Session, Spec, arity_error, find};
use super::reply::Reply;

/// The Redis version reported in `HELLO` and `INFO`: clients branch on it (RESP3,
/// `CLIENT SETINFO`, command options), and 7.2 is what these answers are modelled
/// on.
pub const REDIS_VERSION: &str = "7.2.0";

fn keyword(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// Answers a connection command (its arity already checked).
pub(crate) fn answer(
    session: &mut Session,
    ctx: &Context<'_>,
    spec: &'static Spec,
    args: &[Bytes],
) -> Reply {
    match spec.name {
        "ping" => match args.len() {
            1 => Reply::Simple("PONG".into()),
            2 => Reply::Bulk(args[1].clone()),
            _ => arity_error("ping"),
        },
        "echo" => Reply::Bulk(args[1].clone()),
        "hello" => hello(session, ctx, args),
        "auth" => auth(session, ctx, args),
        "client" => client(session, args),
        "select" => {
            if args[1].as_ref() == b"0" {
                Reply::OK
            } else {
                Reply::error("ERR DB index is out of range")
            }
        }
        "command" => command(args),
        "info" => info(ctx),
        "config" => {
            if keyword(&args[1], "GET") {
                config_get(ctx, &args[2..])
            } else {
                Reply::error(format!(
                    "ERR CONFIG {} is not supported: Oncely's settings are its own \
                     (oncelyd serve --help)",
                    String::from_utf8_lossy(&args[1]).to_ascii_uppercase()
                ))
            }
        }
        "reset" => {
            let since = session.since;
            *session = Session::new(session.id, ctx.state);
            session.since = since;
            Reply::Simple("RESET".into())
        }
        _ => Reply::error("ERR unknown command"),
    }
}

/// `CONFIG GET name...`: the persistence parameters clients and `redis-benchmark`
/// read to learn what an answer is worth (`appendonly`, `appendfsync`, `save`),
/// translated from the store's durability; any other name is unknown, answered
/// with nothing, as Redis answers a name it has not.
fn config_get(ctx: &Context<'_>, names: &[Bytes]) -> Reply {
    use oncely::Durability;
    let durability = ctx.state.tracker().durability();
    let (appendonly, appendfsync) = match durability {
        Durability::Memory => ("no", "no"),
        Durability::Sync => ("yes", "always"),
        // Written to the OS at every write, fsynced by the OS: Redis's `no`.
        Durability::Flush => ("yes", "no"),
    };
    let known = [
        ("appendonly", appendonly),
        ("appendfsync", appendfsync),
        ("save", ""),
    ];
    Reply::Map(
        known
            .iter()
            .filter(|(name, _)| names.iter().any(|n| keyword(n, name) || n.as_ref() == b"*"))
            .map(|(name, value)| (Reply::word(name), Reply::word(value)))
            .collect(),
    )
}

/// Checks a password against the tokens. With no token configured, every password
/// passes (as Redis's `nopass` default user).
fn password_ok(ctx: &Context<'_>, password: &[u8]) -> bool {
    !ctx.state.requires_token() || ctx.state.authorises(password)
}

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

fn hello(session: &mut Session, ctx: &Context<'_>, args: &[Bytes]) -> Reply {
    let mut resp3 = session.resp3;
    let mut i = 1;
    if let Some(version) = args.get(1) {
        match version.as_ref() {
            b"2" => resp3 = false,
            b"3" => resp3 = true,
            _ => {
                if std::str::from_utf8(version)
                    .ok()
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_none()
                {
                    return Reply::error("ERR Protocol version is not an integer or out of range");
                }
                return Reply::error("NOPROTO unsupported protocol version");
            }
        }
        i = 2;
    }
    let mut authed = session.authed;
    let mut name = None;
    while i < args.len() {
        if keyword(&args[i], "AUTH") && i + 2 < args.len() {
            if !password_ok(ctx, &args[i + 2]) {
                return Reply::error(WRONGPASS);
            }
            authed = true;
            i += 3;
        } else if keyword(&args[i], "SETNAME") && i + 1 < args.len() {
            if !valid_name(&args[i + 1]) {
                return bad_name();
            }
            name = Some(args[i + 1].clone());
            i += 2;
        } else {
            return Reply::error(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&args[i])
            ));
        }
    }
    if !authed {
        return Reply::error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
             HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
             select the RESP protocol version at the same time",
        );
    }
    session.resp3 = resp3;
    session.authed = authed;
    if name.is_some() {
        session.name = name;
    }
    Reply::map(vec![
        ("server", Reply::word("oncely")),
        ("version", Reply::word(REDIS_VERSION)),
        ("proto", Reply::Int(if resp3 { 3 } else { 2 })),
        (
            "id",
            Reply::Int(i64::try_from(session.id).unwrap_or(i64::MAX)),
        ),
        ("mode", Reply::word("standalone")),
        ("role", Reply::word("master")),
        ("modules", Reply::Array(Vec::new())),
    ])
}

fn auth(session: &mut Session, ctx: &Context<'_>, args: &[Bytes]) -> Reply {
    if args.len() > 3 {
        return Reply::error("ERR syntax error");
    }
    let password = &args[args.len() - 1];
    if !ctx.state.requires_token() && args.len() == 2 {
        return Reply::error(
            "ERR AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        );
    }
    if password_ok(ctx, password) {
        session.authed = true;
        Reply::OK
    } else {
        Reply::error(WRONGPASS)
    }
}

fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

fn bad_name() -> Reply {
    Reply::error("ERR Client names cannot contain spaces, newlines or special characters.")
}

fn client(session: &mut Session, args: &[Bytes]) -> Reply {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
    match (sub.as_str(), args.len()) {
        ("SETNAME", 3) => {
            if !valid_name(&args[2]) {
                return bad_name();
            }
            session.name = (!args[2].is_empty()).then(|| args[2].clone());
            Reply::OK
        }
        ("GETNAME", 2) => session.name.clone().map_or(Reply::Nil, Reply::Bulk),
        ("ID", 2) => Reply::Int(i64::try_from(session.id).unwrap_or(i64::MAX)),
        ("SETINFO", 4) => {
            if !valid_name(&args[3]) {
                return Reply::error(
                    "ERR lib-name and lib-ver cannot contain spaces, newlines or special characters.",
                );
            }
            if keyword(&args[2], "LIB-NAME") {
                session.lib_name = Some(args[3].clone());
            } else if keyword(&args[2], "LIB-VER") {
                session.lib_ver = Some(args[3].clone());
            } else {
                return Reply::error(format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(&args[2])
                ));
            }
            Reply::OK
        }
        ("INFO", 2) => Reply::text(client_line(session)),
        ("LIST", _) => Reply::text(client_line(session) + "\n"),
        ("NO-EVICT" | "NO-TOUCH", 3) => Reply::OK,
        ("SETNAME" | "GETNAME" | "ID" | "SETINFO" | "INFO" | "NO-EVICT" | "NO-TOUCH", _) => {
            Reply::error(format!(
                "ERR wrong number of arguments for 'client|{}' command",
                sub.to_ascii_lowercase()
            ))
        }
        _ => Reply::error(format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(&args[1])
        )),
    }
}

/// One line of `CLIENT INFO` / `CLIENT LIST` in Redis 7.2's fields and order:
/// redis-py 5 parses the integer ones (`age`, `idle`, `sub`, `multi`, `qbuf`,
/// `omem`, ...) and fails on a line without them. What Oncely does not keep
/// (buffers' sizes, subscriptions) is 0.
fn client_line(session: &Session) -> String {
    let show = |b: &Option<Bytes>| {
        b.as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    let multi = session
        .multi
        .as_ref()
        .map_or(-1, |m| i64::try_from(m.queued.len()).unwrap_or(i64::MAX));
    format!(
        "id={} addr= laddr= fd=-1 name={} age={} idle=0 flags=N db=0 sub=0 psub=0 ssub=0 \
         multi={multi} watch=0 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 \
         oll=0 omem=0 tot-mem=0 events=r cmd=client|info user=default redir=-1 resp={} \
         lib-name={} lib-ver={}",
        session.id,
        show(&session.name),
        session.since.elapsed().as_secs(),
        if session.resp3 { 3 } else { 2 },
        show(&session.lib_name),
        show(&session.lib_ver)
    )
}

/// One command's `COMMAND INFO` entry, in Redis 7's ten fields.
fn info_entry(spec: &Spec) -> Reply {
    let key = spec.first_key;
    Reply::Array(vec![
        Reply::word(spec.name),
        Reply::Int(spec.arity),
        Reply::Array(
            spec.flags
                .iter()
                .map(|f| Reply::Simple((*f).into()))
                .collect(),
        ),
        Reply::Int(key),
        Reply::Int(key),
        Reply::Int(i64::from(key > 0)),
        Reply::Array(vec![Reply::Simple(format!("@{}", spec.group).into())]),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

fn docs_entry(spec: &Spec) -> Reply {
    Reply::map(vec![
        (
            "summary",
            Reply::text(format!("{} -- {}", spec.syntax, spec.summary)),
        ),
        ("since", Reply::word("1.0.0")),
        (
            "group",
            Reply::word(if spec.group.starts_with("oncely") || spec.group == "bf" {
                "module"
            } else {
                spec.group
            }),
        ),
        ("syntax", Reply::word(spec.syntax)),
        ("arguments", Reply::Array(Vec::new())),
    ])
}

fn command(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1) else {
        return Reply::Array(COMMANDS.iter().map(info_entry).collect());
    };
    let names = &args[2..];
    if keyword(sub, "COUNT") && names.is_empty() {
        return Reply::Int(i64::try_from(COMMANDS.len()).unwrap_or(0));
    }
    if keyword(sub, "LIST") {
        return Reply::Array(COMMANDS.iter().map(|s| Reply::word(s.name)).collect());
    }
    if keyword(sub, "INFO") {
        if names.is_empty() {
            return Reply::Array(COMMANDS.iter().map(info_entry).collect());
        }
        return Reply::Array(
            names
                .iter()
                .map(|n| find(n).map_or(Reply::Nil, info_entry))
                .collect(),
        );
    }
    if keyword(sub, "DOCS") {
        let chosen: Vec<&Spec> = if names.is_empty() {
            COMMANDS.iter().collect()
        } else {
            names.iter().filter_map(|n| find(n)).collect()
        };
        return Reply::Map(
            chosen
                .into_iter()
                .map(|s| (Reply::word(s.name), docs_entry(s)))
                .collect(),
        );
    }
    Reply::error(format!(
        "ERR unknown subcommand '{}'. Try COMMAND HELP.",
        String::from_utf8_lossy(sub)
    ))
}

fn info(ctx: &Context<'_>) -> Reply {
    let text = format!(
        "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\n\
         oncely_version:{}\r\nprocess_id:{}\r\nos:{}\r\n\r\n# Clients\r\n\
         connected_clients:{}\r\n\r\n# Persistence\r\nloading:0\r\n\r\n\
         # Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n# Keyspace\r\n",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        std::env::consts::OS,
        ctx.connected,
    );
    Reply::text(text)
}

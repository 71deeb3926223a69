//! The PostgreSQL engine behind the tracker's seam: each call of
//! [`Engine`](crate::tracker::engine::Engine) is the
//! inherent method of the same name, in the module of its concern (marks in `ops`
//! and `mark`, checkpoints in `checkpoint`, forgets in `forget`, administration in
//! `admin`).

use super::Pg;

crate::tracker::engine::forward_engine!(Pg);

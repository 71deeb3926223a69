//! The embedded engine behind the tracker's seam: each call of
//! [`Engine`](crate::tracker::engine::Engine) is the
//! inherent method of the same name, in the module of its concern (marks in
//! `mark`, claims in `claims`, checkpoints in `checkpoint`, administration in
//! `admin`, rotation in `rotation`, forgets in `forget`).

use super::Local;

crate::tracker::engine::forward_engine!(Local);

//! `failsmall server recover-admin`: a new admin token made offline, by someone with access to
//! the data dir, for an installation whose admin tokens were lost. It needs no running
//! server and no token; it is recorded in the changelog (`admin_recovered`) like any change.

use std::path::Path;

use crate::auth::{self, Role};
use crate::store::{NewChange, NewToken, Store, TokenRecord};
use crate::{DB_FILE, ServerError, api};

/// Creates an admin token named `name` for `owner` in the store of `data_dir` (or the
/// PostgreSQL store at `store_url`); its secret and record. The data dir must hold a store already (a fresh one gets its admin at first start).
pub fn recover_admin(
    data_dir: &Path,
    store_url: Option<&str>,
    name: &str,
    owner: &str,
) -> Result<(String, TokenRecord), ServerError> {
    let db = data_dir.join(DB_FILE);
    let store = match store_url {
        Some(url) => Store::open_postgres(url)?,
        None if db.exists() => Store::open(&db)?,
        None => {
            return Err(ServerError::DataDir {
                path: db,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no failsmall store here; a server started on this data dir creates its admin token itself",
                ),
            });
        }
    };
    let token = auth::new_token().map_err(|e| ServerError::Random(e.to_string()))?;
    let hash = auth::token_sha256(&token);
    let reason = format!(
        "admin token {name:?} for {owner} made offline with access to the data dir (recover-admin)"
    );
    let change = NewChange {
        at_ms: api::now_ms(),
        actor: "failsmall server recover-admin",
        kind: "admin_recovered",
        unit: None,
        version: None,
        reason: &reason,
        concerns: None,
        rollout: None,
        stage: None,
    };
    let new = NewToken {
        name,
        role: Role::Admin,
        node: None,
        owner: Some(owner),
        expires_ms: None,
        token_sha256: &hash,
    };
    let record = store.create_token_with(&new, &change)?;
    Ok((token, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovered_admin_token_works_and_is_in_the_changelog() {
        let scratch = tempfile::tempdir().unwrap();
        assert!(recover_admin(scratch.path(), None, "again", "alice").is_err());
        let store = Store::open(&scratch.path().join(DB_FILE)).unwrap();
        drop(store);
        let (token, record) = recover_admin(scratch.path(), None, "again", "alice").unwrap();
        assert_eq!(record.role, Role::Admin);
        let store = Store::open(&scratch.path().join(DB_FILE)).unwrap();
        let found = store
            .active_token(&auth::token_sha256(&token))
            .unwrap()
            .unwrap();
        assert_eq!(found.owner.as_deref(), Some("alice"));
        assert!(store.verify_changelog().unwrap().is_intact());
    }
}

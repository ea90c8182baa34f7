//! Users, permissions and policies created through the management API (or a definitions
//! import), kept in the store so they survive a restart. Values are JSON in RabbitMQ's
//! definitions shapes (a user holds its `password_hash`, never the password); keys are the
//! name, or vhost NUL name.
//!
//! | kind | key | value |
//! |---|---|---|
//! | `DefinitionKind::User` | name | `{"name", "password_hash", "hashing_algorithm", "tags"}` |
//! | `DefinitionKind::Permission` | vhost NUL user | `{"user", "vhost", "configure", "write", "read"}` |
//! | `DefinitionKind::Policy` | vhost NUL name | `{"vhost", "name", "pattern", "apply-to", "priority", "definition"}` |

use lockgate_broker::{ApplyTo, Policy};
use lockgate_store::{Commit, Definition, DefinitionKind, Store};
use serde_json::{json, Value};
use tracing::warn;

use crate::auth::{HashingAlgorithm, PasswordHash};
use crate::management::json::{object_to_table, table_to_json};
use crate::permissions::{Layer, PermissionConfig, UserEntry};

fn pair_key(a: &str, b: &str) -> Vec<u8> {
    let mut key = a.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(b.as_bytes());
    key
}

/// A user in RabbitMQ's definitions shape.
pub fn user_json(user: &UserEntry) -> Value {
    json!({
        "name": user.name,
        "password_hash": user.hash.to_base64(),
        "hashing_algorithm": user.hash.algorithm().name(),
        "tags": user.tags,
        "limits": {},
    })
}

/// A user from RabbitMQ's definitions shape (`tags` as a list or a comma-separated string,
/// as older RabbitMQ versions write it).
///
/// # Errors
/// A missing name, an unknown hashing algorithm or a malformed hash.
pub fn user_from_json(value: &Value) -> Result<UserEntry, String> {
    let name = value["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or("a user needs a non-empty \"name\"")?;
    // A field of another type is refused, not read as absent: `"password": 5` would
    // otherwise create a user without a password.
    let text = |key: &str| match &value[key] {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.as_str())),
        _ => Err(format!("user '{name}': \"{key}\" must be a string")),
    };
    let algorithm = match text("hashing_algorithm")? {
        None => HashingAlgorithm::default(),
        Some(a) => HashingAlgorithm::parse(a).ok_or_else(|| {
            format!("user '{name}': unsupported hashing_algorithm {a:?} (lockgate has rabbit_password_hashing_sha256 and _sha512)")
        })?,
    };
    let hash = match (text("password_hash")?, text("password")?) {
        // RabbitMQ's refusal, word for word: which one was meant is not for us to guess.
        (Some(_), Some(_)) => return Err("both_password_and_password_hash_are_provided".into()),
        (Some(hash), _) => {
            PasswordHash::parse(algorithm, hash).map_err(|e| format!("user '{name}': {e}"))?
        }
        (None, Some(password)) => PasswordHash::new(password)
            .map_err(|e| format!("user '{name}': hashing the password: {e}"))?,
        (None, None) => PasswordHash::parse(algorithm, "").map_err(|e| e.clone())?,
    };
    let tags_error =
        || format!("user '{name}': \"tags\" must be a list of strings or a comma-separated string");
    let tags = match &value["tags"] {
        Value::Array(items) => items
            .iter()
            .map(|t| t.as_str().map(str::to_owned).ok_or_else(tags_error))
            .collect::<Result<_, _>>()?,
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        Value::Null => Vec::new(),
        _ => return Err(tags_error()),
    };
    Ok(UserEntry {
        name: name.to_owned(),
        hash,
        tags,
        loopback_only: false,
    })
}

/// A permission in RabbitMQ's shape.
pub fn permission_json(p: &PermissionConfig) -> Value {
    json!({"user": p.user, "vhost": p.vhost, "configure": p.configure,
           "write": p.write, "read": p.read})
}

/// A permission from RabbitMQ's shape.
///
/// # Errors
/// A missing field or an invalid regular expression.
pub fn permission_from_json(value: &Value) -> Result<PermissionConfig, String> {
    let field = |key: &str| {
        value[key]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("a permission needs a string \"{key}\": {value}"))
    };
    let entry = PermissionConfig {
        user: field("user")?,
        vhost: field("vhost")?,
        configure: field("configure")?,
        write: field("write")?,
        read: field("read")?,
    };
    crate::permissions::VHostPermissions::compile(&entry).map_err(|e| {
        format!(
            "permissions of '{}' in vhost '{}': {e:#}",
            entry.user, entry.vhost
        )
    })?;
    Ok(entry)
}

/// A policy in RabbitMQ's shape.
pub fn policy_json(vhost: &str, p: &Policy) -> Value {
    json!({
        "vhost": vhost, "name": p.name, "pattern": p.pattern.as_str(),
        "apply-to": p.apply_to.as_str(), "priority": p.priority,
        "definition": table_to_json(&p.definition),
    })
}

/// A policy from RabbitMQ's shape (`apply-to` default "all", `priority` default 0).
///
/// # Errors
/// A missing field, or what [`Policy::new`] refuses.
pub fn policy_from_json(vhost: &str, name: &str, value: &Value) -> Result<Policy, String> {
    let pattern = value["pattern"]
        .as_str()
        .ok_or_else(|| format!("policy '{name}' needs a string \"pattern\""))?;
    let apply_to = match value["apply-to"].as_str() {
        None => ApplyTo::All,
        Some(a) => ApplyTo::parse(a).ok_or_else(|| {
            format!("policy '{name}': apply-to {a:?} is not one of queues, exchanges, all")
        })?,
    };
    let priority = match &value["priority"] {
        Value::Null => 0,
        v => v
            .as_i64()
            .ok_or_else(|| format!("policy '{name}': priority must be an integer"))?,
    };
    let Value::Object(definition) = &value["definition"] else {
        return Err(format!("policy '{name}' needs an object \"definition\""));
    };
    Policy::new(
        vhost,
        name,
        pattern,
        apply_to,
        priority,
        object_to_table(definition),
    )
    .map_err(|e| e.0)
}

/// The stored layer from what the store recovered. A record that does not decode is
/// logged and skipped (the rest of the broker's state must not be held hostage by one bad
/// user record).
pub fn load(definitions: &[Definition]) -> Layer {
    let mut layer = Layer::default();
    for def in definitions {
        let value: Value = match serde_json::from_slice(&def.value) {
            Ok(v) => v,
            Err(_)
                if !matches!(
                    def.kind,
                    DefinitionKind::User | DefinitionKind::Permission | DefinitionKind::Policy
                ) =>
            {
                continue
            }
            Err(e) => {
                warn!(kind = ?def.kind, error = %e, "stored definition skipped: not JSON");
                continue;
            }
        };
        let loaded = match def.kind {
            DefinitionKind::User => user_from_json(&value).map(|u| {
                layer.users.insert(u.name.clone(), u);
            }),
            DefinitionKind::Permission => permission_from_json(&value).map(|p| {
                layer
                    .permissions
                    .insert((p.user.clone(), p.vhost.clone()), p);
            }),
            DefinitionKind::Policy => {
                let vhost = value["vhost"].as_str().unwrap_or("/").to_owned();
                let name = value["name"].as_str().unwrap_or_default().to_owned();
                policy_from_json(&vhost, &name, &value).map(|p| {
                    layer.policies.insert((vhost, name), p);
                })
            }
            _ => Ok(()),
        };
        if let Err(e) = loaded {
            warn!(kind = ?def.kind, error = %e, "stored definition skipped");
        }
    }
    layer
}

/// Stores a user.
pub fn put_user(store: &Store, user: &UserEntry) -> Commit {
    store.put_definition(
        DefinitionKind::User,
        user.name.as_bytes(),
        user_json(user).to_string().as_bytes(),
    )
}

/// Removes a user.
pub fn remove_user(store: &Store, name: &str) -> Commit {
    store.remove_definition(DefinitionKind::User, name.as_bytes())
}

/// Stores a permission.
pub fn put_permission(store: &Store, p: &PermissionConfig) -> Commit {
    store.put_definition(
        DefinitionKind::Permission,
        &pair_key(&p.vhost, &p.user),
        permission_json(p).to_string().as_bytes(),
    )
}

/// Removes a permission.
pub fn remove_permission(store: &Store, vhost: &str, user: &str) -> Commit {
    store.remove_definition(DefinitionKind::Permission, &pair_key(vhost, user))
}

/// Stores a policy.
pub fn put_policy(store: &Store, vhost: &str, p: &Policy) -> Commit {
    store.put_definition(
        DefinitionKind::Policy,
        &pair_key(vhost, &p.name),
        policy_json(vhost, p).to_string().as_bytes(),
    )
}

/// Removes a policy.
pub fn remove_policy(store: &Store, vhost: &str, name: &str) -> Commit {
    store.remove_definition(DefinitionKind::Policy, &pair_key(vhost, name))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn def(kind: DefinitionKind, value: &Value) -> Definition {
        Definition {
            kind,
            key: Bytes::new(),
            value: Bytes::from(value.to_string()),
        }
    }

    #[test]
    fn rabbitmq_shaped_records_round_trip() {
        let user = user_from_json(&json!({
            "name": "app", "password_hash": "kI3GCrswBLNZQzHJJ95QLoyfAVooYhnvf7jbqiW9BjOYUloe",
            "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "administrator,monitoring"
        }))
        .unwrap();
        assert!(user.hash.verify("guest"));
        assert_eq!(user.tags, vec!["administrator", "monitoring"]);
        let policy = policy_from_json(
            "/",
            "cap",
            &json!({"pattern": "^q", "apply-to": "queues", "priority": 3,
                    "definition": {"max-length": 5, "overflow": "reject-publish"}}),
        )
        .unwrap();
        let perm = permission_from_json(
            &json!({"user": "app", "vhost": "/", "configure": "^a", "write": ".*", "read": ""}),
        )
        .unwrap();
        let layer = load(&[
            def(DefinitionKind::User, &user_json(&user)),
            def(DefinitionKind::Permission, &permission_json(&perm)),
            def(DefinitionKind::Policy, &policy_json("/", &policy)),
            def(DefinitionKind::User, &json!({"no": "name"})),
        ]);
        assert_eq!(layer.users["app"], user);
        assert_eq!(layer.permissions[&("app".into(), "/".into())], perm);
        assert_eq!(layer.policies[&("/".into(), "cap".into())], policy);
        assert_eq!(layer.users.len(), 1);
    }

    #[test]
    fn bad_records_are_refused_with_a_reason() {
        assert!(user_from_json(
            &json!({"name": "u", "hashing_algorithm": "rabbit_password_hashing_md5",
                                        "password_hash": "x"})
        )
        .unwrap_err()
        .contains("md5"));
        for wrong in [
            json!({"name": "u", "password": 5}),
            json!({"name": "u", "password_hash": ["x"]}),
            json!({"name": "u", "password": "p", "hashing_algorithm": 1}),
            json!({"name": "u", "password": "p", "tags": 5}),
            json!({"name": "u", "password": "p", "tags": ["a", 1]}),
        ] {
            let e = user_from_json(&wrong).unwrap_err();
            assert!(e.contains("must be"), "{wrong}: {e}");
        }
        assert!(user_from_json(&json!({"name": "u", "password": "p", "tags": null})).is_ok());
        let both = json!({"name": "u", "password": "p",
                          "password_hash": "kI3GCrswBLNZQzHJJ95QLoyfAVooYhnvf7jbqiW9BjOYUloe"});
        assert_eq!(
            user_from_json(&both).unwrap_err(),
            "both_password_and_password_hash_are_provided"
        );
        assert!(
            permission_from_json(&json!({"user": "u", "vhost": "/", "configure": "(",
                                             "write": "", "read": ""}))
            .is_err()
        );
        assert!(policy_from_json(
            "/",
            "p",
            &json!({"pattern": ".*", "definition": {"max-length": "x"}})
        )
        .unwrap_err()
        .contains("x-max-length"));
    }
}

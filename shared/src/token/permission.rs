//! Permissions on a cache: the `r`, `w`, `d`, `cc`, `cr`, `cq`, `cd` keys of a
//! `caches` entry (see the module doc of [`crate::token`]).

use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One permission on a cache, with its one- or two-letter claim key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// `r`: read narinfos and NARs.
    Pull,
    /// `w`: upload paths.
    Push,
    /// `d`: delete paths.
    Delete,
    /// `cc`: create the cache.
    CreateCache,
    /// `cr`: change the cache's configuration.
    ConfigureCache,
    /// `cq`: change the cache's retention period.
    ConfigureCacheRetention,
    /// `cd`: destroy the cache.
    DestroyCache,
}

impl Permission {
    /// Every permission, in the order Larder writes them (and atticadm's flags).
    pub const ALL: [Permission; 7] = [
        Self::Pull,
        Self::Push,
        Self::Delete,
        Self::CreateCache,
        Self::ConfigureCache,
        Self::ConfigureCacheRetention,
        Self::DestroyCache,
    ];

    /// The key in the token's JSON: `r`, `w`, `d`, `cc`, `cr`, `cq` or `cd`.
    pub const fn claim_key(self) -> &'static str {
        match self {
            Self::Pull => "r",
            Self::Push => "w",
            Self::Delete => "d",
            Self::CreateCache => "cc",
            Self::ConfigureCache => "cr",
            Self::ConfigureCacheRetention => "cq",
            Self::DestroyCache => "cd",
        }
    }

    /// The permission a claim key stands for, if any.
    pub fn from_claim_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.claim_key() == key)
    }
}

impl fmt::Display for Permission {
    /// Words for messages: "pull", "push", "create cache"…
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pull => "pull",
            Self::Push => "push",
            Self::Delete => "delete",
            Self::CreateCache => "create cache",
            Self::ConfigureCache => "configure cache",
            Self::ConfigureCacheRetention => "configure cache retention",
            Self::DestroyCache => "destroy cache",
        })
    }
}

/// What one `caches` entry grants. Serializes as `{"r": 1, …}` with granted keys only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CachePermissions {
    /// `r`
    pub pull: bool,
    /// `w`
    pub push: bool,
    /// `d`
    pub delete: bool,
    /// `cc`
    pub create_cache: bool,
    /// `cr`
    pub configure_cache: bool,
    /// `cq`
    pub configure_cache_retention: bool,
    /// `cd`
    pub destroy_cache: bool,
}

impl CachePermissions {
    fn slot(&mut self, permission: Permission) -> &mut bool {
        match permission {
            Permission::Pull => &mut self.pull,
            Permission::Push => &mut self.push,
            Permission::Delete => &mut self.delete,
            Permission::CreateCache => &mut self.create_cache,
            Permission::ConfigureCache => &mut self.configure_cache,
            Permission::ConfigureCacheRetention => &mut self.configure_cache_retention,
            Permission::DestroyCache => &mut self.destroy_cache,
        }
    }

    /// Whether `permission` is granted.
    pub fn has(&self, permission: Permission) -> bool {
        match permission {
            Permission::Pull => self.pull,
            Permission::Push => self.push,
            Permission::Delete => self.delete,
            Permission::CreateCache => self.create_cache,
            Permission::ConfigureCache => self.configure_cache,
            Permission::ConfigureCacheRetention => self.configure_cache_retention,
            Permission::DestroyCache => self.destroy_cache,
        }
    }

    /// Grants `permission`.
    pub fn grant(&mut self, permission: Permission) {
        *self.slot(permission) = true;
    }

    /// Whether anything is granted: the bearer may then learn that the cache exists.
    pub fn any(&self) -> bool {
        Permission::ALL.into_iter().any(|p| self.has(p))
    }

    /// The granted permissions, in [`Permission::ALL`] order.
    pub fn granted(&self) -> impl Iterator<Item = Permission> + '_ {
        Permission::ALL.into_iter().filter(|p| self.has(*p))
    }
}

impl Serialize for CachePermissions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for permission in self.granted() {
            map.serialize_entry(permission.claim_key(), &1u8)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for CachePermissions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(PermissionsVisitor)
    }
}

struct PermissionsVisitor;

impl<'de> Visitor<'de> for PermissionsVisitor {
    type Value = CachePermissions;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of permissions such as {\"r\": 1}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = CachePermissions::default();
        let mut seen = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let Some(permission) = Permission::from_claim_key(&key) else {
                // Attic ignores keys it does not know; so do we.
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if seen.contains(&permission) {
                return Err(de::Error::custom(format!("duplicate permission `{key}`")));
            }
            seen.push(permission);
            if map.next_value::<Grant>()?.0 {
                out.grant(permission);
            }
        }
        Ok(out)
    }
}

/// A permission value: `1`/`true` grants, `0`/`false` does not, anything else is an error.
struct Grant(bool);

impl<'de> Deserialize<'de> for Grant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct GrantVisitor;
        impl Visitor<'_> for GrantVisitor {
            type Value = Grant;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("1, 0, true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Grant, E> {
                Ok(Grant(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Grant, E> {
                match v {
                    0 => Ok(Grant(false)),
                    1 => Ok(Grant(true)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Grant, E> {
                Err(E::invalid_value(de::Unexpected::Signed(v), &self))
            }
        }
        d.deserialize_any(GrantVisitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::Permission::*;
    use super::*;

    fn perms(keys: &[Permission]) -> CachePermissions {
        let mut p = CachePermissions::default();
        for k in keys {
            p.grant(*k);
        }
        p
    }

    #[test]
    fn permission_claim_keys_round_trip() {
        let keys: Vec<_> = Permission::ALL.iter().map(|p| p.claim_key()).collect();
        assert_eq!(keys, ["r", "w", "d", "cc", "cr", "cq", "cd"]);
        for p in Permission::ALL {
            assert_eq!(Permission::from_claim_key(p.claim_key()), Some(p));
        }
        assert_eq!(Permission::from_claim_key("x"), None);
        assert_eq!(
            ConfigureCacheRetention.to_string(),
            "configure cache retention"
        );
    }

    #[test]
    fn cache_permissions_has_any_granted() {
        let empty = CachePermissions::default();
        assert!(!empty.any());
        assert!(Permission::ALL.iter().all(|p| !empty.has(*p)));
        for p in Permission::ALL {
            let one = perms(&[p]);
            assert!(one.any() && one.has(p));
            assert_eq!(one.granted().collect::<Vec<_>>(), [p]);
            assert_eq!(Permission::ALL.iter().filter(|q| one.has(**q)).count(), 1);
        }
        let p = perms(&[DestroyCache, Pull]);
        assert!(p.pull && p.destroy_cache && !p.push);
    }

    #[test]
    fn permissions_serialize_as_ones_in_fixed_order() {
        let p = perms(&[DestroyCache, CreateCache, Pull]);
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"r":1,"cc":1,"cd":1}"#
        );
        let all = perms(&Permission::ALL);
        assert_eq!(
            serde_json::to_string(&all).unwrap(),
            r#"{"r":1,"w":1,"d":1,"cc":1,"cr":1,"cq":1,"cd":1}"#
        );
        assert_eq!(
            serde_json::to_string(&CachePermissions::default()).unwrap(),
            "{}"
        );
    }

    #[test]
    fn permissions_accept_one_and_true_only_as_grants() {
        let p: CachePermissions =
            serde_json::from_value(json!({"r": 1, "w": true, "d": 0, "cc": false, "zz": [1]}))
                .unwrap();
        assert_eq!(p, perms(&[Pull, Push]));
        for bad in [
            json!({"r": 2}),
            json!({"r": -1}),
            json!({"r": "1"}),
            json!({"r": null}),
        ] {
            assert!(
                serde_json::from_value::<CachePermissions>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        assert!(serde_json::from_str::<CachePermissions>(r#"{"r":1,"r":0}"#).is_err());
    }
}

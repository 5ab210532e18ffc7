//! Who is making the request: the user and tenant, read from request extensions.
//!
//! The application's authentication layer inserts its own principal type into the request
//! extensions; implementing [`UserIdentity`] for it lets every layer of this crate read the
//! user id (rate limit per user, profiler records, cache keys by principal) and the
//! tenant the user belongs to (the tenant resolver's anti-spoofing check). The tenant
//! resolver inserts the resolved tenant, which implements [`TenantIdentity`].
//!
//! An [`IdentityReader`] is configured once, on a layer, with the concrete types to look
//! for; reading is one type-map lookup, no allocation.
//!
//! # Example
//!
//! ```
//! use tower_rampart::identity::{IdentityReader, UserIdentity};
//!
//! #[derive(Clone)]
//! struct Claims { sub: String, tenant: String }
//!
//! impl UserIdentity for Claims {
//!     fn user_id(&self) -> &str { &self.sub }
//!     fn tenant_id(&self) -> Option<&str> { Some(&self.tenant) }
//! }
//!
//! let reader = IdentityReader::new().user::<Claims>();
//! let mut req = http::Request::new(());
//! assert_eq!(reader.user_id(req.extensions()), None);
//! req.extensions_mut().insert(Claims { sub: "alice".into(), tenant: "acme".into() });
//! assert_eq!(reader.user_id(req.extensions()), Some("alice"));
//! assert_eq!(reader.principal_tenant_id(req.extensions()), Some("acme"));
//! ```

use std::fmt;

use http::Extensions;

/// The authenticated principal, as the application's auth layer stores it in extensions.
pub trait UserIdentity: Clone + Send + Sync + 'static {
    /// A stable identifier of the user (a subject, a primary key).
    fn user_id(&self) -> &str;

    /// The tenant the user belongs to, if the application is multi-tenant.
    ///
    /// By default, `None`.
    fn tenant_id(&self) -> Option<&str> {
        None
    }
}

/// The tenant a request was resolved to, as the tenant layer stores it in extensions.
pub trait TenantIdentity: Clone + Send + Sync + 'static {
    /// The tenant's identifier (normalised, validated).
    fn tenant_id(&self) -> &str;
}

type Read = for<'a> fn(&'a Extensions) -> Option<&'a str>;

fn read_user<T: UserIdentity>(ext: &Extensions) -> Option<&str> {
    ext.get::<T>().map(UserIdentity::user_id)
}

fn read_user_tenant<T: UserIdentity>(ext: &Extensions) -> Option<&str> {
    ext.get::<T>().and_then(UserIdentity::tenant_id)
}

fn read_tenant<T: TenantIdentity>(ext: &Extensions) -> Option<&str> {
    ext.get::<T>().map(TenantIdentity::tenant_id)
}

/// Reads the user and tenant of a request from its extensions. `Copy`, no allocation.
///
/// By default it knows no type and reads nothing: anonymous, no tenant.
#[derive(Clone, Copy, Default)]
pub struct IdentityReader {
    user: Option<Read>,
    user_tenant: Option<Read>,
    tenant: Option<Read>,
}

impl IdentityReader {
    /// A reader that knows no type yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the user (and the user's tenant) from an extension of type `T`.
    #[must_use]
    pub fn user<T: UserIdentity>(mut self) -> Self {
        self.user = Some(read_user::<T>);
        self.user_tenant = Some(read_user_tenant::<T>);
        self
    }

    /// Reads the resolved tenant from an extension of type `T`.
    #[must_use]
    pub fn tenant<T: TenantIdentity>(mut self) -> Self {
        self.tenant = Some(read_tenant::<T>);
        self
    }

    /// The authenticated user's id, or `None` for an anonymous request.
    pub fn user_id<'a>(&self, ext: &'a Extensions) -> Option<&'a str> {
        self.user.and_then(|f| f(ext))
    }

    /// The tenant the authenticated user belongs to.
    pub fn principal_tenant_id<'a>(&self, ext: &'a Extensions) -> Option<&'a str> {
        self.user_tenant.and_then(|f| f(ext))
    }

    /// The tenant the request was resolved to (by the tenant layer).
    pub fn tenant_id<'a>(&self, ext: &'a Extensions) -> Option<&'a str> {
        self.tenant.and_then(|f| f(ext))
    }
}

impl fmt::Debug for IdentityReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityReader")
            .field("user", &self.user.is_some())
            .field("tenant", &self.tenant.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct User(&'static str);
    impl UserIdentity for User {
        fn user_id(&self) -> &str {
            self.0
        }
    }

    #[derive(Clone)]
    struct Tenant(String);
    impl TenantIdentity for Tenant {
        fn tenant_id(&self) -> &str {
            &self.0
        }
    }

    #[test]
    fn reads_only_configured_types() {
        let mut ext = Extensions::new();
        ext.insert(User("bob"));
        ext.insert(Tenant("globex".into()));
        let none = IdentityReader::new();
        assert_eq!(none.user_id(&ext), None);
        assert_eq!(none.tenant_id(&ext), None);
        let r = IdentityReader::new().user::<User>().tenant::<Tenant>();
        assert_eq!(r.user_id(&ext), Some("bob"));
        assert_eq!(
            r.principal_tenant_id(&ext),
            None,
            "default tenant_id of a user is None"
        );
        assert_eq!(r.tenant_id(&ext), Some("globex"));
        assert!(format!("{r:?}").contains("user: true"));
    }
}

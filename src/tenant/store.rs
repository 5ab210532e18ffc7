//! Tenant stores: identifier → tenant value. In-memory, closure, and a caching wrapper.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    marker::PhantomData,
    sync::{Arc, RwLock},
};

use super::id::{InvalidTenantId, TenantId};

/// A store lookup that failed (database down, timeout…). Not the same as "unknown":
/// unknown tenants are `Ok(None)`.
///
/// By default the layer answers a store error with a 503 JSON body, never a 500.
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::StoreError;
///
/// let e = StoreError::new("connection refused");
/// assert_eq!(e.to_string(), "connection refused");
/// ```
#[derive(Clone)]
pub struct StoreError(Arc<dyn std::error::Error + Send + Sync>);

impl StoreError {
    /// A store error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(
            message.into(),
        )))
    }

    /// Wraps any error of the backing store.
    pub fn from_error(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StoreError")
            .field(&self.0.to_string())
            .finish()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Maps a validated identifier to the application's tenant value.
///
/// `Ok(None)` means "no such tenant" (404); `Err` means the store could not answer (503
/// by default). Implementations receive only identifiers that passed [`TenantId`]
/// validation: raw request input never reaches a store.
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::{StoreError, TenantId, TenantStore};
///
/// struct Db;
///
/// impl TenantStore for Db {
///     type Tenant = u64;
///     async fn lookup(&self, id: &TenantId) -> Result<Option<u64>, StoreError> {
///         Ok((id.as_str() == "acme").then_some(42))
///     }
/// }
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// assert_eq!(Db.lookup(&TenantId::parse("acme").unwrap()).await.unwrap(), Some(42));
/// # });
/// ```
pub trait TenantStore: Send + Sync + 'static {
    /// The tenant value put into request extensions (cheap to clone: use an `Arc` for
    /// large values).
    type Tenant: Clone + Send + Sync + 'static;

    /// Looks a tenant up.
    fn lookup(
        &self,
        id: &TenantId,
    ) -> impl Future<Output = Result<Option<Self::Tenant>, StoreError>> + Send;
}

impl<St: TenantStore> TenantStore for Arc<St> {
    type Tenant = St::Tenant;

    fn lookup(
        &self,
        id: &TenantId,
    ) -> impl Future<Output = Result<Option<Self::Tenant>, StoreError>> + Send {
        (**self).lookup(id)
    }
}

/// An in-memory store, changeable at run time. Clones share the map.
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::{MemoryStore, TenantId, TenantStore};
///
/// let store = MemoryStore::new();
/// store.insert("Acme", "Acme Corp").unwrap();
/// assert!(store.insert("../etc", "nope").is_err());
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let id = TenantId::parse("acme").unwrap();
/// assert_eq!(store.lookup(&id).await.unwrap(), Some("Acme Corp"));
/// # });
/// ```
#[derive(Debug)]
pub struct MemoryStore<T> {
    map: Arc<RwLock<HashMap<TenantId, T>>>,
}

impl<T> Clone for MemoryStore<T> {
    fn clone(&self) -> Self {
        Self {
            map: Arc::clone(&self.map),
        }
    }
}

impl<T> Default for MemoryStore<T> {
    fn default() -> Self {
        Self {
            map: Arc::default(),
        }
    }
}

impl<T> MemoryStore<T> {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a tenant; the identifier is validated and normalised.
    ///
    /// # Errors
    ///
    /// [`InvalidTenantId`] when `id` is not an acceptable identifier.
    pub fn insert(&self, id: &str, tenant: T) -> Result<(), InvalidTenantId> {
        let id = TenantId::parse(id)?;
        self.write().insert(id, tenant);
        Ok(())
    }

    /// Adds a tenant, consuming and returning the store (for building).
    ///
    /// # Errors
    ///
    /// [`InvalidTenantId`] when `id` is not an acceptable identifier.
    pub fn with(self, id: &str, tenant: T) -> Result<Self, InvalidTenantId> {
        self.insert(id, tenant)?;
        Ok(self)
    }

    /// Removes a tenant, returning it.
    pub fn remove(&self, id: &str) -> Option<T> {
        let id = TenantId::parse(id).ok()?;
        self.write().remove(&id)
    }

    /// The number of tenants.
    pub fn len(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether the store holds no tenant.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TenantId, T>> {
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<T: Clone + Send + Sync + 'static> TenantStore for MemoryStore<T> {
    type Tenant = T;

    fn lookup(&self, id: &TenantId) -> impl Future<Output = Result<Option<T>, StoreError>> + Send {
        let found = self
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned();
        std::future::ready(Ok(found))
    }
}

/// A store backed by an async closure `Fn(TenantId) -> Future<Output = Result<Option<T>,
/// StoreError>>` (a database query, an HTTP call…). Build it with [`store_fn`].
pub struct FnStore<F, T> {
    f: F,
    _tenant: PhantomData<fn() -> T>,
}

impl<F, T> fmt::Debug for FnStore<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnStore(..)")
    }
}

impl<F: Clone, T> Clone for FnStore<F, T> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _tenant: PhantomData,
        }
    }
}

/// A store from an async closure.
///
/// # Example
///
/// ```
/// use tower_rampart::tenant::{StoreError, TenantId, TenantStore, store_fn};
///
/// let store = store_fn(|id: TenantId| async move {
///     Ok::<_, StoreError>((id.as_str() == "acme").then(|| id.to_string().to_uppercase()))
/// });
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let acme = TenantId::parse("acme").unwrap();
/// assert_eq!(store.lookup(&acme).await.unwrap().as_deref(), Some("ACME"));
/// # });
/// ```
pub fn store_fn<F, Fut, T>(f: F) -> FnStore<F, T>
where
    F: Fn(TenantId) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<T>, StoreError>> + Send,
    T: Clone + Send + Sync + 'static,
{
    FnStore {
        f,
        _tenant: PhantomData,
    }
}

impl<F, Fut, T> TenantStore for FnStore<F, T>
where
    F: Fn(TenantId) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<T>, StoreError>> + Send,
    T: Clone + Send + Sync + 'static,
{
    type Tenant = T;

    fn lookup(&self, id: &TenantId) -> impl Future<Output = Result<Option<T>, StoreError>> + Send {
        (self.f)(id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_crud() {
        let store = MemoryStore::new().with("acme", 1).unwrap();
        let shared = store.clone();
        assert!(shared.insert("a.b", 2).is_err());
        shared.insert("Globex", 2).unwrap();
        assert_eq!(store.len(), 2);
        let id = TenantId::parse("globex").unwrap();
        assert_eq!(store.lookup(&id).await.unwrap(), Some(2));
        assert_eq!(Arc::new(store.clone()).lookup(&id).await.unwrap(), Some(2));
        assert_eq!(store.remove("GLOBEX"), Some(2));
        assert_eq!(store.remove("../x"), None);
        assert_eq!(store.lookup(&id).await.unwrap(), None);
        assert!(!store.is_empty());
        assert!(MemoryStore::<u8>::new().is_empty());
    }

    #[tokio::test]
    async fn fn_store_and_errors() {
        let store =
            store_fn(|_id: TenantId| async { Err::<Option<u8>, _>(StoreError::new("down")) });
        let e = store
            .clone()
            .lookup(&TenantId::parse("x").unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "down");
        assert!(format!("{e:?}").contains("down"));
        assert_eq!(format!("{store:?}"), "FnStore(..)");
        let io = StoreError::from_error(std::io::Error::other("io"));
        assert_eq!(io.to_string(), "io");
        assert!(std::error::Error::source(&io).is_none());
    }
}

//! `RecyclerRegistry`: one recycler per value type, looked up by type.

use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use heijunka_core::sync::RwLock;

use crate::{Recycler, RecyclerStats, RegisterError};

/// One [`Recycler`] per value type, looked up by type: a global pool per message
/// type, for code that routes values by what they are (the seeds' per-type
/// routing).
///
/// A lookup takes a read lock and clones the recycler (an `Arc`): look up once and
/// keep the handle on a hot path.
///
/// ```
/// # if heijunka_core::sync::IS_LOOM { return Ok(()); } // loom types work only inside a model
/// use heijunka_recycler::{Recycler, RecyclerRegistry};
///
/// let registry = RecyclerRegistry::new();
/// registry.insert(Recycler::new(64, || Vec::<u8>::with_capacity(1024))?)?;
/// let strings = registry.get_or_insert_with(|| Recycler::new(64, String::new).unwrap());
///
/// let bytes = registry.get::<Vec<u8>>().expect("registered above");
/// drop(bytes.get());
/// drop(strings.get());
/// let stats = registry.stats();
/// assert_eq!(stats.recyclers.len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RecyclerRegistry {
    recyclers: RwLock<Map>,
}

type Map = HashMap<TypeId, Box<dyn Entry>>;

/// A registered recycler, its type erased.
trait Entry: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn type_name(&self) -> &'static str;
    fn stats(&self) -> RecyclerStats;
}

impl<T: Send + Sync + 'static> Entry for Recycler<T> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn type_name(&self) -> &'static str {
        type_name::<T>()
    }

    fn stats(&self) -> RecyclerStats {
        Recycler::stats(self)
    }
}

/// The stats of every recycler in a registry, by value type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RegistryStats {
    /// One entry per registered recycler, sorted by type name.
    pub recyclers: Vec<TypeStats>,
}

/// One registered recycler's stats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TypeStats {
    /// The value type, as `std::any::type_name` writes it.
    pub type_name: &'static str,
    /// Its recycler's counters.
    pub stats: RecyclerStats,
}

impl RecyclerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            recyclers: RwLock::new(HashMap::new()),
        }
    }

    /// The process-wide registry.
    #[cfg(not(loom))]
    pub fn global() -> &'static RecyclerRegistry {
        static GLOBAL: std::sync::OnceLock<RecyclerRegistry> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(RecyclerRegistry::new)
    }

    /// Registers `recycler` as the one for `T`; hands it back if `T` already has one.
    pub fn insert<T: Send + Sync + 'static>(
        &self,
        recycler: Recycler<T>,
    ) -> Result<(), RegisterError<Recycler<T>>> {
        let id = recycler.id();
        let refused = self.write(|map| {
            if map.contains_key(&TypeId::of::<T>()) {
                return Some(recycler);
            }
            map.insert(TypeId::of::<T>(), Box::new(recycler));
            None
        });
        if let Some(recycler) = refused {
            return Err(RegisterError::new(recycler, type_name::<T>()));
        }
        tracing::debug!(
            recycler.id = id,
            recycler.value = type_name::<T>(),
            "recycler registered"
        );
        Ok(())
    }

    /// The recycler for `T`, if one is registered.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<Recycler<T>> {
        self.read(|map| {
            map.get(&TypeId::of::<T>())
                .and_then(|e| e.as_any().downcast_ref::<Recycler<T>>())
                .cloned()
        })
    }

    /// The recycler for `T`, registering the one `make` builds if there is none.
    /// `make` runs without the registry's lock held; if another thread registers
    /// a recycler for `T` meanwhile, that one wins and is returned.
    pub fn get_or_insert_with<T: Send + Sync + 'static>(
        &self,
        make: impl FnOnce() -> Recycler<T>,
    ) -> Recycler<T> {
        if let Some(r) = self.get::<T>() {
            return r;
        }
        let made = make();
        match self.insert(made.clone()) {
            Ok(()) => made,
            Err(_) => self
                .get::<T>()
                .expect("insert failed because a recycler for T is registered"),
        }
    }

    /// Unregisters the recycler for `T` and returns it. Handles already looked up
    /// keep working.
    pub fn remove<T: Send + Sync + 'static>(&self) -> Option<Recycler<T>> {
        // The entry is dropped after the lock is released: if it is the last
        // handle, dropping it drops the idle values.
        let entry = self.write(|map| map.remove(&TypeId::of::<T>()))?;
        let removed = entry.as_any().downcast_ref::<Recycler<T>>().cloned();
        drop(entry);
        if let Some(r) = &removed {
            tracing::debug!(
                recycler.id = r.id(),
                recycler.value = type_name::<T>(),
                "recycler unregistered"
            );
        }
        removed
    }

    /// How many recyclers are registered.
    pub fn len(&self) -> usize {
        self.read(HashMap::len)
    }

    /// Whether no recycler is registered.
    pub fn is_empty(&self) -> bool {
        self.read(HashMap::is_empty)
    }

    /// Every registered recycler's stats, sorted by type name.
    pub fn stats(&self) -> RegistryStats {
        let mut recyclers: Vec<TypeStats> = self.read(|map| {
            map.values()
                .map(|e| TypeStats {
                    type_name: e.type_name(),
                    stats: e.stats(),
                })
                .collect()
        });
        recyclers.sort_by_key(|t| t.type_name);
        RegistryStats { recyclers }
    }

    fn read<R>(&self, f: impl FnOnce(&Map) -> R) -> R {
        // Never held across user code: a poisoned lock still holds a valid map.
        let map = self
            .recyclers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&map)
    }

    fn write<R>(&self, f: impl FnOnce(&mut Map) -> R) -> R {
        // Never held across user code: a poisoned lock still holds a valid map.
        let mut map = self
            .recyclers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut map)
    }
}

impl Default for RecyclerRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RecyclerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&'static str> =
            self.read(|map| map.values().map(|e| e.type_name()).collect());
        names.sort_unstable();
        f.debug_struct("RecyclerRegistry")
            .field("types", &names)
            .finish()
    }
}

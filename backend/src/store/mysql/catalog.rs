//! The catalog database as a [`CatalogSource`].

use std::{collections::HashMap, time::Instant};

use async_trait::async_trait;
use sqlx::mysql::MySqlPool;

use crate::{
    catalog::{self, Metric, Snapshot},
    error::Result,
    store::CatalogSource,
};

/// The catalog tables (`migrations/catalog`), read through `pool`.
pub struct MySqlCatalog {
    pool: MySqlPool,
}

impl MySqlCatalog {
    pub fn new(pool: MySqlPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }
}

#[async_trait]
impl CatalogSource for MySqlCatalog {
    async fn load(&self) -> Result<Snapshot> {
        let pool = &self.pool;
        let read_at = Instant::now();
        let shards = catalog::list_shards(pool).await?;
        let environments = catalog::list_environments(pool).await?;
        let mut metrics: HashMap<u32, Vec<Metric>> = HashMap::new();
        for metric in catalog::all_metrics(pool).await? {
            metrics.entry(metric.env_id).or_default().push(metric);
        }
        Ok(Snapshot {
            shards: shards.into_iter().map(|s| (s.id, s)).collect(),
            environments: environments.into_iter().map(|e| (e.id, e)).collect(),
            metrics,
            read_at,
        })
    }

    async fn read_token_env(&self, hash: &[u8; 32]) -> Result<Option<u32>> {
        catalog::read_token_env(&self.pool, hash).await
    }
}

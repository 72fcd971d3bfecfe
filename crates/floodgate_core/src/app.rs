//! A mounted streaming app: its limits and its routes (`files`, later uploads, SSE, ...).

use crate::body::{self, Body};
use crate::config::{RouteSpec, StreamingConfig, StreamingSpec};
use crate::conn_state::ConnState;
use crate::delivery::Delivery;
use crate::files::FilesMount;
use crate::limit::bucket::ClientBuckets;
use crate::metrics::{Metrics, Rejection};
use crate::router::MountTable;
use http::{Request, Response, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;

enum Route {
    Files(FilesMount),
}

pub struct StreamingApp {
    config: StreamingConfig,
    routes: MountTable<Route>,
    client_buckets: Option<Arc<ClientBuckets>>,
}

/// Who is asking, and over which connection.
pub struct RequestContext {
    pub client: IpAddr,
    pub conn: Arc<ConnState>,
    pub metrics: Arc<Metrics>,
}

impl StreamingApp {
    pub fn build(spec: StreamingSpec) -> Result<Self, String> {
        let config = spec.options;
        let mut routes = MountTable::default();
        for route in spec.routes {
            match route {
                RouteSpec::Files { prefix, options } => {
                    routes.insert(prefix, Route::Files(FilesMount::new(options)?))
                }
            }
        }
        let client_buckets = (config.per_client_bandwidth > 0)
            .then(|| ClientBuckets::new(config.per_client_bandwidth, config.chunk_size));
        Ok(Self {
            config,
            routes,
            client_buckets,
        })
    }

    pub fn handle<B>(
        &self,
        request: &Request<B>,
        rel: &str,
        context: RequestContext,
    ) -> Response<Body> {
        context.conn.set_send_timeout(self.config.send_timeout);
        let Some((route, rest)) = self.routes.find(rel) else {
            context.metrics.reject(Rejection::NotFound);
            return body::text(StatusCode::NOT_FOUND, "Not Found\n");
        };
        let delivery = self.delivery(&context);
        match route {
            Route::Files(files) => files.serve(request.method(), request.headers(), rest, delivery),
        }
    }

    fn delivery(&self, context: &RequestContext) -> Delivery {
        Delivery {
            metrics: Arc::clone(&context.metrics),
            conn: Arc::clone(&context.conn),
            chunk_size: self.config.chunk_size,
            per_connection: self.config.rate_limit_bandwidth,
            client: self.client_buckets.as_ref().map(|buckets| {
                (
                    Arc::clone(buckets),
                    crate::limit::conn::client_key(context.client),
                )
            }),
            client_rate: self.config.per_client_bandwidth,
            download_timeout: self.config.download_timeout,
        }
    }
}

//! Custom resources the stand-in serves as a cluster with another network plugin would: policy
//! kinds beyond NetworkPolicy (Cilium's, the upstream AdminNetworkPolicy API's two kinds), so `explain`
//! can be tested on a cluster that has them. Only what the stand-in reads is typed (metadata);
//! the spec is kept as JSON.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::serde::{Deserialize, Serialize};

/// A custom resource type: apiVersion, kind, metadata and an untyped spec, with the
/// k8s-openapi traits the stand-in's store needs.
macro_rules! custom_resource {
    ($name:ident, $group:literal, $version:literal, $plural:literal, $scope:ty) => {
        #[doc = concat!("`", stringify!($name), "` (", $group, "/", $version, ").")]
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(crate = "k8s_openapi::serde")]
        pub struct $name {
            #[serde(rename = "apiVersion")]
            pub api_version: String,
            pub kind: String,
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: serde_json::Value,
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    api_version: concat!($group, "/", $version).to_owned(),
                    kind: stringify!($name).to_owned(),
                    metadata: ObjectMeta::default(),
                    spec: serde_json::Value::Null,
                }
            }
        }

        impl k8s_openapi::Resource for $name {
            const API_VERSION: &'static str = concat!($group, "/", $version);
            const GROUP: &'static str = $group;
            const KIND: &'static str = stringify!($name);
            const VERSION: &'static str = $version;
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = $scope;
        }

        impl k8s_openapi::ListableResource for $name {
            const LIST_KIND: &'static str = concat!(stringify!($name), "List");
        }

        impl k8s_openapi::Metadata for $name {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

custom_resource!(
    CiliumNetworkPolicy,
    "cilium.io",
    "v2",
    "ciliumnetworkpolicies",
    k8s_openapi::NamespaceResourceScope
);
custom_resource!(
    ClusterNetworkPolicy,
    "policy.networking.k8s.io",
    "v1alpha2",
    "clusternetworkpolicies",
    k8s_openapi::ClusterResourceScope
);
custom_resource!(
    AdminNetworkPolicy,
    "policy.networking.k8s.io",
    "v1alpha1",
    "adminnetworkpolicies",
    k8s_openapi::ClusterResourceScope
);
custom_resource!(
    BaselineAdminNetworkPolicy,
    "policy.networking.k8s.io",
    "v1alpha1",
    "baselineadminnetworkpolicies",
    k8s_openapi::ClusterResourceScope
);

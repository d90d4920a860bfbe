//! Stable snake_case names, written once per enum: [`names!`] generates the enum, `ALL`,
//! `as_str`, `Display`, `FromStr` (with a helpful error) and [`Named`], which the proto
//! conversions and the Prometheus labels use.

/// An enum whose values have stable names.
pub trait Named: Copy + Sized + 'static {
    /// Every value, in display order.
    const ALL: &'static [Self];
    /// Short name of the enum for error messages ("kind", "direction").
    const WHAT: &'static str;
    fn as_str(self) -> &'static str;

    /// The value with this name.
    fn from_name(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|v| v.as_str()).collect();
                format!(
                    "unknown {} {s:?} (expected one of: {})",
                    Self::WHAT.to_ascii_lowercase(),
                    names.join(", ")
                )
            })
    }
}

macro_rules! names {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            /// Every value, in display order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The stable name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl $crate::evidence::names::Named for $name {
            const ALL: &'static [$name] = $name::ALL;
            const WHAT: &'static str = stringify!($name);
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$name as $crate::evidence::names::Named>::from_name(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}
pub(crate) use names;

//! Hostile (well, from the future): built for `tandem:module@2.0.0`. The host must refuse it at
//! load time with a message that names both versions.

wit_bindgen::generate!({ path: "wit", world: "module" });

struct Future;

impl exports::tandem::module::plugin::Guest for Future {
    fn check(checker: String) -> String {
        tandem::module::host::log("from the future");
        format!("{checker}: up")
    }
}

export!(Future);

import Foundation

/// The folder holding vlmsh's models and session store: `$VLMSH_HOME`, or `$HOME/.vlmsh` when it
/// is unset or empty. Resolved here only, so the CLI, the store and the tests always agree.
public enum VLMHome {
    public static func path(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let home = environment["VLMSH_HOME"], !home.isEmpty { return (home as NSString).expandingTildeInPath }
        let user = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return (user as NSString).appendingPathComponent(".vlmsh")
    }

    /// Where models are installed (`make model`) and looked up by name.
    public static func models(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        (path(environment: environment) as NSString).appendingPathComponent("models")
    }
}

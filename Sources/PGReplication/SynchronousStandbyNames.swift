/// Reading the primary's `synchronous_standby_names` (`name, ...`, `FIRST n (...)`, `ANY n (...)`).
public enum SynchronousStandbyNames {
    /// Whether the setting can select a standby called `name`: names compare case-insensitively, may be
    /// double-quoted, and `*` matches every standby.
    public static func includes(_ setting: String, name: String) -> Bool {
        var tokens: [String] = []
        var current = ""
        var quoted = false
        for c in setting {
            if c == "\"" {
                quoted.toggle()
            } else if !quoted && (c == "," || c == "(" || c == ")" || c == " " || c == "\t") {
                if !current.isEmpty { tokens.append(current) }
                current = ""
            } else {
                current.append(c)
            }
        }
        if !current.isEmpty { tokens.append(current) }
        return tokens.contains { $0 == "*" || $0.lowercased() == name.lowercased() }
    }
}

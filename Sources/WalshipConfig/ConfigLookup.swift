extension ConfigFile {
    /// The value of `key` in the `[table]` table, else at the top level, as a command line would carry it; nil when
    /// absent or not a single value. For commands that borrow another command's settings (`walship prune` reads
    /// the receiver's retention from `[receive]`).
    public func argumentText(_ key: String, in table: String) -> String? {
        (tables[table]?[key] ?? common[key])?.argumentText
    }
}

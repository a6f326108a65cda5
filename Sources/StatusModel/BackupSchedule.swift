import Foundation

/// `walship backup --if-older-than`: whether a new base backup is due, judged from the receiver's status document
/// (its `newestBackup` per system), so a timer or cron job can run the command often and take a backup only when
/// the newest one has aged past the limit.
public enum BackupSchedule {
    public enum Decision: Sendable, Equatable {
        /// Take a backup; why, in one line.
        case take(String)
        /// Do not: the one line to print (the newest backup's id and age).
        case skip(String)
    }

    /// The decision for `system` with `maxAge` seconds, from the receiver's status document.
    public static func decide(status: StatusDocument, system: String, maxAge: Double, now: Date) -> Decision {
        let limit = formatDuration(maxAge)
        guard let entry = status.systems.first(where: { $0.systemIdentifier == system }) else {
            return .take("the receiver holds no spool of system \(system) yet: taking its first base backup")
        }
        guard let newest = entry.newestBackup else {
            return .take("the receiver has no complete base backup of system \(system): taking one")
        }
        let age = now.timeIntervalSince(newest.takenAt)
        guard age < maxAge else {
            return .take(
                "the newest complete base backup, \(newest.id), is \(formatDuration(age)) old (limit \(limit)): taking a new one")
        }
        return .skip(
            "backup not needed: the newest complete base backup of system \(system), \(newest.id), is \(formatDuration(max(0, age))) old, younger than --if-older-than \(limit)"
        )
    }
}

import Foundation
import Spool
import StatusModel

/// Which stored base backup a restore starts from: the one `--backup` names, else the newest complete one; with a
/// recovery target time, the newest complete one stored by then (PostgreSQL cannot stop recovery before the
/// backup's end, and a backup is stored, its `createdAt`, only after its data ends).
public enum BackupChoice {
    public static func choose(
        _ backups: [BackupInfo], requested: String?, endingBy targetTime: Date?, describe: (String) -> String = { $0 }
    ) throws -> BackupInfo {
        let complete = backups.filter { $0.status == .complete }.sorted { $0.id < $1.id }
        if let requested {
            guard let named = backups.first(where: { $0.id == requested }) else {
                throw RestoreError(describe("no backup \(requested)"))
            }
            if let targetTime, named.createdAt > targetTime {
                throw RestoreError(
                    "backup \(requested) was stored at \(formatISO8601(named.createdAt)), after the target time \(formatISO8601(targetTime)): recovery cannot stop before a backup's end (hint: leave out --backup to use the newest backup stored by then)"
                )
            }
            return named
        }
        guard let newest = complete.last else { throw RestoreError(describe("no complete base backup")) }
        guard let targetTime else { return newest }
        guard let reaching = complete.last(where: { $0.createdAt <= targetTime }) else {
            throw RestoreError(
                describe(
                    "no complete base backup stored by \(formatISO8601(targetTime)) (the oldest, \(complete[0].id), was stored at \(formatISO8601(complete[0].createdAt))): recovery cannot stop before a backup's end"
                ))
        }
        return reaching
    }
}

/// `--target-time` as PostgreSQL takes it (`2026-11-23 10:15:00+00`, `…10:15:00.25+01:30`, `…T10:15:00Z`, `… UTC`),
/// read here only to choose the backup; PostgreSQL still reads the text itself. Without a zone the time is this
/// host's local time, which is PostgreSQL's too when its TimeZone matches the host's.
public struct TargetTime: Sendable, Equatable {
    public var date: Date
    public var zoneGiven: Bool

    public static func parse(_ text: String) -> TargetTime? {
        let pattern =
            /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?\s*(Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?$/
        guard let m = text.trimmingCharacters(in: .whitespaces).wholeMatch(of: pattern) else { return nil }
        var parts = DateComponents()
        (parts.year, parts.month, parts.day) = (Int(m.output.1), Int(m.output.2), Int(m.output.3))
        (parts.hour, parts.minute, parts.second) = (Int(m.output.4), Int(m.output.5), m.output.6.flatMap { Int($0) } ?? 0)
        guard let month = parts.month, (1...12).contains(month), let day = parts.day, (1...31).contains(day),
            let hour = parts.hour, hour < 24, let minute = parts.minute, minute < 60, let second = parts.second, second < 61
        else { return nil }
        var zone = TimeZone.current
        if let designator = m.output.8 {
            var offset = 0
            if designator.first == "+" || designator.first == "-" {
                let digits = designator.dropFirst().filter(\.isNumber)
                let hours = Int(digits.prefix(2)) ?? 0, minutes = Int(digits.dropFirst(2)) ?? 0
                guard hours <= 15, minutes < 60 else { return nil }
                offset = (hours * 3600 + minutes * 60) * (designator.first == "-" ? -1 : 1)
            }
            guard let fixed = TimeZone(secondsFromGMT: offset) else { return nil }
            zone = fixed
        }
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = zone
        guard let whole = calendar.date(from: parts), calendar.component(.day, from: whole) == day else { return nil }
        let fraction = m.output.7.flatMap { Double("0" + $0) } ?? 0
        return TargetTime(date: whole.addingTimeInterval(fraction), zoneGiven: m.output.8 != nil)
    }
}

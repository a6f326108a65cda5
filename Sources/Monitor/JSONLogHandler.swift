import Foundation
import Logging
import Synchronization

/// Log lines as JSON objects, one per line on standard error (`--log-format json`): time, level, logger, message,
/// and every metadata key as its own field (`walship.system`, `walship.error`, …), for journald's and log
/// collectors' field extraction.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let write: @Sendable (String) -> Void

    public init(label: String, write: @escaping @Sendable (String) -> Void = JSONLogHandler.standardError) {
        self.label = label
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let own = event.metadata { merged.merge(own) { $1 } }
        write(
            Self.line(
                date: Date(), level: event.level, label: label, message: event.message.description, metadata: merged,
                source: event.source))
    }

    /// One log line: a JSON object with sorted keys, so that lines compare and grep alike.
    public static func line(
        date: Date, level: Logger.Level, label: String, message: String, metadata: Logger.Metadata, source: String
    ) -> String {
        var object: [String: Any] = [:]
        for (key, value) in metadata { object[key] = json(value) }
        object["time"] = formatISO8601Milliseconds(date)
        object["level"] = level.rawValue
        object["logger"] = label
        object["message"] = message
        object["source"] = source
        guard
            let data = try? JSONSerialization.data(
                withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        else { return #"{"level":"error","message":"a log line could not be encoded"}"# }
        return String(decoding: data, as: UTF8.self)
    }

    private static func json(_ value: Logger.Metadata.Value) -> Any {
        switch value {
        case .string(let text): text
        case .stringConvertible(let convertible): convertible.description
        case .array(let values): values.map(json)
        case .dictionary(let entries): entries.mapValues(json)
        }
    }

    private static let output = Mutex(())

    /// Writes whole lines, one at a time, to standard error.
    public static let standardError: @Sendable (String) -> Void = { line in
        output.withLock { _ in FileHandle.standardError.write(Data((line + "\n").utf8)) }
    }
}

/// `2026-12-07T18:06:27.123Z`.
private func formatISO8601Milliseconds(_ date: Date) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter.string(from: date)
}

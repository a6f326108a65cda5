import ArgumentParser
import WALCore

// Sizes and durations as option values. The parsers live in WALCore so the sender's policies read durations
// the same way; a configuration file's integer or string reaches them as command-line text (Layering).

extension ByteSize: ExpressibleByArgument {
    public init?(argument: String) {
        guard let size = try? ByteSize(parsing: argument) else { return nil }
        self = size
    }

    public var defaultValueDescription: String { description }
}

extension TimeSpan: ExpressibleByArgument {
    public init?(argument: String) {
        guard let span = try? TimeSpan(parsing: argument) else { return nil }
        self = span
    }

    public var defaultValueDescription: String { description }
}

public enum UnitArguments {
    /// ArgumentParser's error for a size or duration it could not parse (`The value '10GB' is invalid for
    /// '--spool-max-bytes <size>'`) with the reason and the nearest valid form added; other messages unchanged.
    /// Options of these types name their value `size` or `duration` for this.
    public static func explain(_ message: String) -> String {
        let pattern = /The value '(?<value>[^']*)' is invalid for '(?<option>--[A-Za-z0-9-]+) <(?<kind>size|duration)>'(?!:)/
        return message.replacing(pattern) { match in
            let value = String(match.output.value)
            let reason: String
            do {
                if match.output.kind == "size" {
                    _ = try ByteSize(parsing: value)
                } else {
                    _ = try TimeSpan(parsing: value)
                }
                return String(match.output.0)
            } catch {
                reason = "\(error)"
            }
            return "\(match.output.0): \(reason)"
        }
    }
}

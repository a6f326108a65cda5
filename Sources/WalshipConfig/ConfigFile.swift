import Foundation
import TOMLKit

/// A value from the configuration file, reduced to what a command line can say.
public enum ConfigValue: Sendable, Equatable {
    case string(String)
    case integer(Int)
    case float(Double)
    case bool(Bool)
    case array([ConfigValue])
    /// A table, date or time: never the value of an option.
    case other(String)

    /// What the value is, for errors (never the value itself: it may be a secret).
    var typeName: String {
        switch self {
        case .string: "a string"
        case .integer: "an integer"
        case .float: "a number"
        case .bool: "a boolean"
        case .array: "an array"
        case .other(let type): "a \(type)"
        }
    }

    /// The text a command line would carry, or nil for a value that is not a single scalar.
    public var argumentText: String? {
        switch self {
        case .string(let text): text
        case .integer(let value): String(value)
        // 30.0 is written "30" so that an integer option accepts it too.
        case .float(let value): value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
        case .bool, .array, .other: nil
        }
    }
}

public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A walship configuration file: keys shared by every command at the top, and one table per command
/// (`[send]`, `[receive]`) whose keys are that command's long option names.
public struct ConfigFile: Sendable, Equatable {
    public let path: String
    /// Top-level keys: options shared by the commands that read the file.
    public var common: [String: ConfigValue]
    /// One table per command, by command name.
    public var tables: [String: [String: ConfigValue]]

    public init(path: String, common: [String: ConfigValue] = [:], tables: [String: [String: ConfigValue]] = [:]) {
        self.path = path
        self.common = common
        self.tables = tables
    }

    public static func load(path: String) throws -> ConfigFile {
        guard let data = FileManager.default.contents(atPath: path) else {
            let exists = FileManager.default.fileExists(atPath: path)
            throw ConfigError(
                exists
                    ? "cannot read the configuration file \(path) (hint: check that this user may read it)"
                    : "the configuration file \(path) does not exist (hint: contrib/walship.toml.example is a starting point)")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError("the configuration file \(path) is not UTF-8 text")
        }
        return try parse(text, path: path)
    }

    public static func parse(_ text: String, path: String) throws -> ConfigFile {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigError(
                "\(path):\(error.source.begin.line):\(error.source.begin.column): not valid TOML: \(error.description)")
        } catch {
            throw ConfigError("\(path): not valid TOML: \(error)")
        }
        var file = ConfigFile(path: path)
        for key in table.keys {
            guard let value = table[key] else { continue }
            if let inner = value.table {
                var entries: [String: ConfigValue] = [:]
                for innerKey in inner.keys {
                    if let innerValue = inner[innerKey] { entries[innerKey] = convert(innerValue) }
                }
                file.tables[key] = entries
            } else {
                file.common[key] = convert(value)
            }
        }
        return file
    }

    static func convert(_ value: TOMLValueConvertible) -> ConfigValue {
        switch value.type {
        case .string: return .string(value.string ?? "")
        case .int: return .integer(value.int ?? 0)
        case .double: return .float(value.double ?? 0)
        case .bool: return .bool(value.bool ?? false)
        case .array: return .array((value.array ?? TOMLArray()).map { convert($0) })
        case .table: return .other("table")
        case .date, .time, .dateTime: return .other("date or time")
        }
    }

    /// The commands this file has a table for.
    public var roles: [String] { tables.keys.sorted() }
}

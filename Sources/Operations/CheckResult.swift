import Foundation

/// One line of `walship check`: how the check went, what it is about, what was found, and what to do.
public struct CheckResult: Sendable, Equatable {
    public enum Level: Sendable, Equatable {
        case ok, warning, failure

        /// The column `walship check` prints, pgBackRest style, four characters wide.
        var label: String {
            switch self {
            case .ok: "ok  "
            case .warning: "WARN"
            case .failure: "FAIL"
            }
        }
    }

    public var level: Level
    /// What was checked: `configuration`, `source`, `slot`, `spool`, a listen option, …
    public var name: String
    public var message: String
    public var hint: String?

    public init(_ level: Level, _ name: String, _ message: String, hint: String? = nil) {
        self.level = level
        self.name = name
        self.message = message
        self.hint = hint
    }

    public static func ok(_ name: String, _ message: String, hint: String? = nil) -> CheckResult {
        CheckResult(.ok, name, message, hint: hint)
    }

    public static func warn(_ name: String, _ message: String, hint: String? = nil) -> CheckResult {
        CheckResult(.warning, name, message, hint: hint)
    }

    public static func fail(_ name: String, _ message: String, hint: String? = nil) -> CheckResult {
        CheckResult(.failure, name, message, hint: hint)
    }

    /// The printed line, without its newline: one line even when a message (an error's text) spans several.
    public var line: String {
        let text = "\(name): \(message)" + (hint.map { " (hint: \($0))" } ?? "")
        let joined = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.joined(
            separator: " ")
        return "\(level.label)  \(joined)"
    }
}

/// The results of one `walship check` run, handed on one by one as the checks complete (a slow check
/// must not hold back the lines before it).
public struct CheckReport {
    public private(set) var results: [CheckResult] = []
    private let emit: (CheckResult) -> Void

    public init(emit: @escaping (CheckResult) -> Void) { self.emit = emit }

    public var failures: Int { results.count { $0.level == .failure } }

    /// Whether the run fails: on a FAIL line, and with `strict` on a WARN line too.
    public func failed(strict: Bool) -> Bool {
        results.contains { $0.level == .failure || (strict && $0.level == .warning) }
    }

    public mutating func add(_ result: CheckResult) {
        results.append(result)
        emit(result)
    }
}

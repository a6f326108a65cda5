import WALCore

/// The replication commands a stock PostgreSQL 15 standby (and pg_receivewal) sends.
public enum ReplicationCommand: Hashable, Sendable {
    case identifySystem
    case timelineHistory(TimeLineID)
    case show(String)
    case readReplicationSlot(String)
    case startReplication(slot: String?, start: LSN, timeline: TimeLineID?)

    public struct ParseError: Error, Hashable, CustomStringConvertible {
        public let description: String
    }

    /// Parses one command: keywords case-insensitive, optional `PHYSICAL`, quoted or bare slot names,
    /// a trailing semicolon. Anything else is a syntax error, as PostgreSQL's walsender would answer.
    public static func parse(_ text: String) throws(ParseError) -> ReplicationCommand {
        var tokens = try tokenize(text)
        if tokens.last == ";" { tokens.removeLast() }
        guard let first = tokens.first?.uppercased() else { throw ParseError(description: "empty command") }
        func word(_ i: Int) -> String? { i < tokens.count ? tokens[i] : nil }
        switch first {
        case "IDENTIFY_SYSTEM" where tokens.count == 1:
            return .identifySystem
        case "TIMELINE_HISTORY" where tokens.count == 2:
            guard let tli = UInt32(tokens[1]), tli > 0 else { throw ParseError(description: "invalid timeline \"\(tokens[1])\"") }
            return .timelineHistory(tli)
        case "SHOW" where tokens.count == 2:
            return .show(tokens[1].lowercased())
        case "READ_REPLICATION_SLOT" where tokens.count == 2:
            return .readReplicationSlot(unquote(tokens[1]))
        case "START_REPLICATION":
            var i = 1
            var slot: String?
            if word(i)?.uppercased() == "SLOT", let name = word(i + 1) {
                slot = unquote(name)
                i += 2
            }
            if word(i)?.uppercased() == "PHYSICAL" { i += 1 }
            if word(i)?.uppercased() == "LOGICAL" {
                throw ParseError(description: "logical replication is not supported by this server")
            }
            guard let lsnText = word(i), let start = LSN(lsnText) else {
                throw ParseError(description: "syntax error in START_REPLICATION")
            }
            i += 1
            var timeline: TimeLineID?
            if word(i)?.uppercased() == "TIMELINE", let t = word(i + 1).flatMap({ UInt32($0) }) {
                timeline = t
                i += 2
            }
            guard i == tokens.count else { throw ParseError(description: "syntax error in START_REPLICATION") }
            return .startReplication(slot: slot, start: start, timeline: timeline)
        default:
            throw ParseError(description: "syntax error or unsupported replication command: \(text.prefix(80))")
        }
    }

    private static func tokenize(_ text: String) throws(ParseError) -> [String] {
        var tokens: [String] = []
        var current = ""
        var quoted = false
        var iterator = Array(text).makeIterator()
        while let c = iterator.next() {
            if quoted {
                current.append(c)
                if c == "\"" { quoted = false }
            } else if c == "\"" {
                current.append(c)
                quoted = true
            } else if c == " " || c == "\t" || c == "\n" || c == "\r" {
                if !current.isEmpty { tokens.append(current) }
                current = ""
            } else if c == ";" {
                if !current.isEmpty { tokens.append(current) }
                current = ""
                tokens.append(";")
            } else {
                current.append(c)
            }
        }
        if quoted { throw ParseError(description: "unterminated quoted identifier") }
        if !current.isEmpty { tokens.append(current) }
        return tokens
    }

    private static func unquote(_ token: String) -> String {
        guard token.hasPrefix("\""), token.hasSuffix("\""), token.count >= 2 else { return token.lowercased() }
        return String(token.dropFirst().dropLast()).replacingOccurrences(of: "\"\"", with: "\"")
    }
}

extension String {
    fileprivate func replacingOccurrences(of target: String, with replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}

/// The XML S3 answers with is small and regular (no namespaces that matter, no mixed content, no DTDs), so a tree
/// of elements with their text is enough; FoundationXML would bring libxml2 into a statically linked release.
public struct XMLElement: Sendable, Equatable {
    public var name: String
    public var text: String
    public var children: [XMLElement]

    /// The first child called `name`.
    public func child(_ name: String) -> XMLElement? { children.first { $0.name == name } }
    /// Every child called `name`, in order.
    public func children(_ name: String) -> [XMLElement] { children.filter { $0.name == name } }
    /// The text of the first child called `name`.
    public func value(_ name: String) -> String? { child(name)?.text }
}

public struct XMLParseError: Error, Equatable, CustomStringConvertible {
    public var reason: String
    public var description: String { "malformed XML in the store's answer: \(reason)" }
}

public enum S3XML {
    /// Parses a document into its root element. Declarations, comments and processing instructions are skipped;
    /// the five named entities and numeric references are decoded; CDATA is kept as text.
    public static func parse(_ bytes: some Collection<UInt8>) throws(XMLParseError) -> XMLElement {
        let input = Array(bytes)
        var index = 0
        var stack: [XMLElement] = []
        var root: XMLElement?

        func fail(_ reason: String) -> XMLParseError { XMLParseError(reason: reason) }
        func starts(with prefix: String) -> Bool {
            let p = Array(prefix.utf8)
            return index + p.count <= input.count && Array(input[index..<index + p.count]) == p
        }
        func skip(past terminator: String) throws(XMLParseError) {
            let t = Array(terminator.utf8)
            while index + t.count <= input.count {
                if Array(input[index..<index + t.count]) == t {
                    index += t.count
                    return
                }
                index += 1
            }
            throw fail("unterminated \(terminator)")
        }

        while index < input.count {
            if input[index] != UInt8(ascii: "<") {
                let start = index
                while index < input.count && input[index] != UInt8(ascii: "<") { index += 1 }
                if !stack.isEmpty { stack[stack.count - 1].text += try decodeEntities(input[start..<index]) }
                continue
            }
            if starts(with: "<?") {
                try skip(past: "?>")
            } else if starts(with: "<!--") {
                try skip(past: "-->")
            } else if starts(with: "<![CDATA[") {
                let start = index + 9
                try skip(past: "]]>")
                if !stack.isEmpty { stack[stack.count - 1].text += String(decoding: input[start..<index - 3], as: UTF8.self) }
            } else if starts(with: "<!") {
                try skip(past: ">")
            } else if starts(with: "</") {
                let start = index + 2
                try skip(past: ">")
                let name = String(decoding: input[start..<index - 1], as: UTF8.self).trimmingSpaces()
                guard var element = stack.popLast(), element.name == name else {
                    throw fail("closing tag </\(name)> does not match")
                }
                if !element.children.isEmpty { element.text = element.text.trimmingSpaces() }
                if stack.isEmpty {
                    root = element
                } else {
                    stack[stack.count - 1].children.append(element)
                }
            } else {
                let start = index + 1
                try skip(past: ">")
                var tag = String(decoding: input[start..<index - 1], as: UTF8.self)
                let selfClosing = tag.hasSuffix("/")
                if selfClosing { tag.removeLast() }
                let name = String(tag.prefix { !$0.isWhitespace })
                guard !name.isEmpty else { throw fail("an empty tag name") }
                guard root == nil else { throw fail("content after the root element") }
                let element = XMLElement(name: name, text: "", children: [])
                if selfClosing {
                    if stack.isEmpty { root = element } else { stack[stack.count - 1].children.append(element) }
                } else {
                    stack.append(element)
                }
            }
        }
        guard stack.isEmpty, let root else { throw fail(stack.isEmpty ? "no root element" : "unclosed <\(stack.last!.name)>") }
        return root
    }

    static func decodeEntities(_ bytes: ArraySlice<UInt8>) throws(XMLParseError) -> String {
        let text = String(decoding: bytes, as: UTF8.self)
        guard text.contains("&") else { return text }
        var out = ""
        var rest = Substring(text)
        while let amp = rest.firstIndex(of: "&") {
            out += rest[..<amp]
            guard let semi = rest[amp...].firstIndex(of: ";") else { throw XMLParseError(reason: "an unterminated entity") }
            let entity = rest[rest.index(after: amp)..<semi]
            switch entity {
            case "amp": out += "&"
            case "lt": out += "<"
            case "gt": out += ">"
            case "quot": out += "\""
            case "apos": out += "'"
            default:
                let number: UInt32? =
                    entity.hasPrefix("#x") || entity.hasPrefix("#X")
                    ? UInt32(entity.dropFirst(2), radix: 16) : entity.hasPrefix("#") ? UInt32(entity.dropFirst()) : nil
                guard let number, let scalar = Unicode.Scalar(number) else {
                    throw XMLParseError(reason: "an unknown entity &\(entity);")
                }
                out.unicodeScalars.append(scalar)
            }
            rest = rest[rest.index(after: semi)...]
        }
        return out + rest
    }
}

extension String {
    func trimmingSpaces() -> String {
        String(self.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}

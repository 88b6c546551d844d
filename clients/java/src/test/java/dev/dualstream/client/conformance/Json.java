package dev.dualstream.client.conformance;

import java.util.Map;

/** Just enough JSON for the conformance app's flat lines of strings, numbers and booleans. */
final class Json {
  private Json() {}

  static String object(Map<String, Object> fields) {
    StringBuilder json = new StringBuilder("{");
    for (Map.Entry<String, Object> field : fields.entrySet()) {
      if (json.length() > 1) {
        json.append(',');
      }
      string(json, field.getKey());
      json.append(':');
      Object value = field.getValue();
      if (value instanceof Number || value instanceof Boolean) {
        json.append(value);
      } else {
        string(json, String.valueOf(value));
      }
    }
    return json.append('}').toString();
  }

  private static void string(StringBuilder json, String text) {
    json.append('"');
    for (int i = 0; i < text.length(); i++) {
      char c = text.charAt(i);
      switch (c) {
        case '"' -> json.append("\\\"");
        case '\\' -> json.append("\\\\");
        case '\n' -> json.append("\\n");
        case '\r' -> json.append("\\r");
        case '\t' -> json.append("\\t");
        default -> {
          if (c < 0x20) {
            json.append(String.format("\\u%04x", (int) c));
          } else {
            json.append(c);
          }
        }
      }
    }
    json.append('"');
  }
}

"""FHIR search: index values extracted from resources, shared by SQL indexing and matching.

"Extract once, match twice" (http://hl7.org/fhir/R4/search.html): every R4 SearchParameter
that applies to a resource is compiled once into an :class:`Extractor` that pulls typed index
values (:class:`TokenValue`, :class:`StringValue`, :class:`DateValue`, ...) out of the
resource's JSON.  The storage indexer writes them to per-type index tables; subscriptions and
alert rules match against the very same values in memory.

Modules: ``values`` (the value types and their normalisation), ``elements`` (typed element
lookup in the StructureDefinitions), ``fastpath`` (typed paths walked on dicts), ``convert``
(element -> index values per parameter type), ``references`` (reference parsing),
``branches`` (evaluating one expression branch), ``extract`` (compiling parameters).
"""

from carebridge.search.extract import (
    Extractor,
    compile_parameter,
    extract,
    extractor_for,
    extractors_for,
    values_of,
)
from carebridge.search.references import parse_reference
from carebridge.search.values import (
    CompositeValue,
    DateValue,
    IndexValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    date_range,
    implicit_range,
    normalize_string,
)

__all__ = [
    "CompositeValue",
    "DateValue",
    "Extractor",
    "IndexValue",
    "NumberValue",
    "QuantityValue",
    "ReferenceValue",
    "StringValue",
    "TokenValue",
    "UriValue",
    "compile_parameter",
    "date_range",
    "extract",
    "extractor_for",
    "extractors_for",
    "implicit_range",
    "normalize_string",
    "parse_reference",
    "values_of",
]

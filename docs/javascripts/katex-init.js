// Typesets the mathematics of every page with the vendored KaTeX (no network needed).
//
// Markdown pages: `pymdownx.arithmatex` (generic mode) leaves `\(...\)` and `\[...\]`
// inside elements of class `arithmatex`. Notebook pages (mkdocs-jupyter): the cells'
// Markdown keeps Jupyter's `$...$` and `$$...$$`, inside `.jupyter-wrapper`. Dollar
// signs are only read as maths there, so that a `$` elsewhere stays a dollar.
// `document$` is mkdocs-material's page-load stream (it also fires on instant
// navigation); without it, typeset once on load.
(function () {
  var bracketed = [
    { left: "\\[", right: "\\]", display: true },
    { left: "\\(", right: "\\)", display: false },
  ];
  var dollars = [
    { left: "$$", right: "$$", display: true },
    { left: "$", right: "$", display: false },
  ];

  function typeset(root) {
    if (typeof renderMathInElement === "undefined") return;
    root.querySelectorAll(".arithmatex").forEach(function (element) {
      renderMathInElement(element, { delimiters: bracketed, throwOnError: false });
    });
    root.querySelectorAll(".jupyter-wrapper").forEach(function (element) {
      renderMathInElement(element, {
        delimiters: dollars.concat(bracketed),
        ignoredClasses: ["highlight-ipynb", "jp-OutputArea"],
        throwOnError: false,
      });
    });
  }

  if (typeof document$ !== "undefined") {
    document$.subscribe(function () {
      typeset(document);
    });
  } else {
    document.addEventListener("DOMContentLoaded", function () {
      typeset(document);
    });
  }
})();

// Marks every box that scrolls sideways (display equations, tables, long inline formulas) with
// the edge that hides more content: .scroll-cue-right / .scroll-cue-left, which custom.css fades.
(function () {
  "use strict";
  const SELECTOR = 'mjx-container[display="true"], .pst-scrollable-table-container, ' +
                   "div.cell_output .output.text_html, article.bd-article span.math";

  // A glyph that overhangs its box by a few pixels (an italic letter, a subscript) is no content
  // to scroll to: only a box that hides more than MIN_HIDDEN pixels gets a fade.
  const MIN_HIDDEN = 12;

  function mark(box) {
    const hidden = box.scrollWidth - box.clientWidth;
    const more = hidden > MIN_HIDDEN;
    box.classList.toggle("scroll-cue-left", more && box.scrollLeft > 1);
    box.classList.toggle("scroll-cue-right", more && box.scrollLeft < hidden - 1);
  }

  // A box is marked again whenever its size changes: the window is resized, MathJax typesets, or
  // a folded block (a solution, a hidden cell input) that holds it opens.
  const resized = new ResizeObserver((entries) => entries.forEach((e) => mark(e.target)));
  const watchAll = () => document.querySelectorAll(SELECTOR).forEach((box) => {
    resized.observe(box);
    mark(box);
  });

  document.addEventListener("scroll", (event) => {
    const box = event.target;
    if (box instanceof Element && box.matches(SELECTOR)) mark(box);
  }, true);
  window.addEventListener("load", () => {
    watchAll();
    const mj = window.MathJax;
    if (mj && mj.startup && mj.startup.promise) mj.startup.promise.then(watchAll);
  });
})();
